#!/usr/bin/env node
// A private aedes MQTT broker for the end-to-end tests' interop run (CSG_TEST_BROKER=aedes).
//
//   node server.js --port P [--host 127.0.0.1]
//
// Anonymous, in memory (retained messages and Wills live as long as the process), MQTT 3.1.1
// and 3.1 only: aedes 0.51 refuses an MQTT 5 CONNECT.
//
// Nagle is turned off on every accepted socket: aedes leaves it on, and a request/reply round
// trip then costs ~44 ms (Nagle + delayed ACK) instead of well under a millisecond.
//
// The log goes to stderr, one event a line, in the shape of Mosquitto's `log_type all` lines
// ("New client connected from ... as ID (p2, c1, k5).", "Received PUBLISH from ...",
// "Client ID disconnected." ...): the harness reads broker logs to see what a broker saw
// (a CONNECT's flags, a Will, a clean DISCONNECT, a re-subscription), and one shape serves
// both brokers. Every line states what aedes itself parsed or did; nothing is assumed.
// " running" is printed once the listener is open: the harness waits for it.
'use strict'

const net = require('net')
const aedesVersion = require('aedes/package.json').version

function usage (msg) {
  process.stderr.write(`server.js: ${msg}\nusage: node server.js --port P [--host H]\n`)
  process.exit(2)
}

let port = null
let host = '127.0.0.1'
const argv = process.argv.slice(2)
for (let i = 0; i < argv.length; i += 2) {
  const value = argv[i + 1]
  if (value === undefined) usage(`${argv[i]} needs a value`)
  switch (argv[i]) {
    case '--port':
      port = Number(value)
      if (!Number.isInteger(port) || port < 1 || port > 65535) usage(`not a port: ${value}`)
      break
    case '--host':
      host = value
      break
    default:
      usage(`unknown option ${argv[i]}`)
  }
}
if (port === null) usage('--port is required')

function two (n) {
  return String(n).padStart(2, '0')
}

function log (line) {
  const t = new Date()
  process.stderr.write(`${two(t.getHours())}:${two(t.getMinutes())}:${two(t.getSeconds())}: ${line}\n`)
}

// Mosquitto's protocol tag: p1 is MQTT 3.1, p2 is 3.1.1, p5 is 5.
function protocolTag (version) {
  return version === 3 ? 'p1' : version === 4 ? 'p2' : `p${version}`
}

function publishFlags (packet) {
  const bytes = packet.payload ? packet.payload.length : 0
  const mid = packet.messageId === undefined ? 0 : packet.messageId
  return `(d${packet.dup ? 1 : 0}, q${packet.qos}, r${packet.retain ? 1 : 0}, m${mid}, '${packet.topic}', ... (${bytes} bytes))`
}

const broker = require('aedes')({
  // A CONNECT's details are logged here, before authentication, as Mosquitto's connect line is
  // about the CONNECT packet; there is no authentication to fail.
  preConnect (client, packet, callback) {
    const addr = client.conn && client.conn.remoteAddress
    const rport = client.conn && client.conn.remotePort
    const user = packet.username ? `, u'${packet.username}'` : ''
    log(`New client connected from ${addr}:${rport} as ${packet.clientId} ` +
      `(${protocolTag(packet.protocolVersion)}, c${packet.clean ? 1 : 0}, k${packet.keepalive}${user}).`)
    if (packet.will) {
      const w = packet.will
      const bytes = w.payload ? w.payload.length : 0
      log(`Will message specified (${bytes} bytes) (r${w.retain ? 1 : 0}, q${w.qos}).`)
      log(`\t${w.topic}`)
    } else {
      log('No will message specified.')
    }
    callback(null, true)
  },
  authorizePublish (client, packet, callback) {
    log(`Received PUBLISH from ${client.id} ${publishFlags(packet)}`)
    callback(null)
  }
})

broker.on('connackSent', (packet, client) => {
  log(`Sending CONNACK to ${client.id} (${packet.sessionPresent ? 1 : 0}, ${packet.returnCode || 0})`)
})
broker.on('subscribe', (subscriptions, client) => {
  log(`Received SUBSCRIBE from ${client.id}`)
  for (const s of subscriptions) {
    log(`\t${s.topic} (QoS ${s.qos})`)
  }
  log(`Sending SUBACK to ${client.id}`)
})
broker.on('unsubscribe', (topics, client) => {
  log(`Received UNSUBSCRIBE from ${client.id}`)
  for (const t of topics) log(`\t${t}`)
})
broker.on('keepaliveTimeout', (client) => {
  log(`Client ${client.id} has exceeded timeout, disconnecting.`)
})
broker.on('clientError', (client, err) => {
  log(`Client ${client.id} error: ${err.message}`)
})
broker.on('connectionError', (client, err) => {
  log(`Connection error before CONNECT: ${err.message}`)
})
// aedes marks a client that sent DISCONNECT; any other end is a closed socket, whose Will fires.
broker.on('clientDisconnect', (client) => {
  if (client._disconnected) {
    log(`Received DISCONNECT from ${client.id}`)
    log(`Client ${client.id} disconnected.`)
  } else {
    log(`Client ${client.id} closed its connection.`)
  }
})

const server = net.createServer((socket) => {
  socket.setNoDelay(true)
  broker.handle(socket)
})
server.on('error', (err) => {
  if (err.code === 'EADDRINUSE') {
    log(`Error: Address already in use (${host}:${port})`)
  } else {
    log(`Error: ${err.message}`)
  }
  process.exit(1)
})
server.listen(port, host, () => {
  log(`Opening ipv4 listen socket on port ${port}.`)
  log(`aedes version ${aedesVersion} (node ${process.version}) running`)
})

function stop (signal) {
  log(`${signal} received, exiting.`)
  process.exit(0)
}
process.on('SIGTERM', () => stop('SIGTERM'))
process.on('SIGINT', () => stop('SIGINT'))
