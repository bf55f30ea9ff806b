// The csg console's live updates: one server-sent event stream per page (GET /ui/events);
// each presence change redraws the rows and badges of that gateway, wherever they are on the
// page (rows swapped in by htmx too, as they are looked up when an event comes), and each job
// change its progress. Without JavaScript the pages still read; they are just not live.
(function () {
  "use strict";
  var source = document.querySelector("[data-live]");
  if (!source || !window.EventSource) { return; }
  var live = document.getElementById("live");
  function say(text) { if (live) { live.textContent = text; } }
  var es = new EventSource(source.getAttribute("data-live"));
  es.onopen = function () { say("live"); document.body.setAttribute("data-live-open", "1"); };
  es.onerror = function () { say("live updates reconnecting…"); document.body.removeAttribute("data-live-open"); };
  es.addEventListener("presence", function (m) {
    var e;
    try { e = JSON.parse(m.data); } catch (err) { return; }
    var nodes = document.querySelectorAll("[data-gw]");
    for (var i = 0; i < nodes.length; i++) {
      var n = nodes[i];
      if (n.getAttribute("data-gw") !== e.key) { continue; }
      var badge = n.hasAttribute("data-presence-badge") ? n : n.querySelector("[data-presence]");
      if (badge) { badge.textContent = e.to; badge.className = "presence p-" + e.to; }
      var since = n.querySelector("[data-since]");
      if (since) { since.textContent = e.since; since.title = e.since_utc; }
      n.setAttribute("data-state", e.to);
    }
    // The fleet's counts follow (a gateway new to the console has no "from").
    if (e.from && e.from !== e.to) {
      var from = document.getElementById("n-" + e.from), to = document.getElementById("n-" + e.to);
      if (from && to) {
        from.textContent = String(Math.max(0, parseInt(from.textContent, 10) - 1));
        to.textContent = String(parseInt(to.textContent, 10) + 1);
      }
    }
    // The gateway page: its identity section too.
    var badge = document.querySelector("[data-presence-badge]");
    if (badge && badge.getAttribute("data-gw") === e.key) {
      var text = document.querySelector("[data-presence-text]");
      if (text) { text.textContent = e.to; }
      var since = document.querySelector("dd [data-since]");
      if (since) { since.textContent = e.since; since.title = e.since_utc; }
    }
  });
  // A job's progress: its page's counts, bar and state at once, and the rest of its page
  // (executions, actions, times) fetched again and swapped in, at most once a second and at
  // once when the job ends; the jobs list's state cells. No reload.
  var bodyTimer = null;
  function refreshJob() {
    bodyTimer = null;
    if (!window.htmx || !document.getElementById("job-body")) { return; }
    window.htmx.ajax("GET", window.location.href, { target: "#job-body", select: "#job-body", swap: "outerHTML" });
  }
  es.addEventListener("job", function (m) {
    var e;
    try { e = JSON.parse(m.data); } catch (err) { return; }
    var rows = document.querySelectorAll("[data-job]");
    for (var i = 0; i < rows.length; i++) {
      if (rows[i].getAttribute("data-job") !== e.id) { continue; }
      var cell = rows[i].querySelector(".jstate");
      if (cell) { cell.textContent = e.state; cell.className = "jstate j-" + e.state; }
    }
    var head = document.querySelector("[data-job-page]");
    if (!head || head.getAttribute("data-job-page") !== e.id) { return; }
    var c = e.counts || {};
    var names = ["total", "queued", "in_progress", "succeeded", "failed", "timed_out", "rejected", "cancelled"];
    for (var j = 0; j < names.length; j++) {
      var n = document.getElementById("c-" + names[j]);
      if (n && typeof c[names[j]] === "number") { n.textContent = String(c[names[j]]); }
    }
    var total = c.total || 0, done = total - (c.queued || 0) - (c.in_progress || 0);
    var d = document.getElementById("c-done");
    if (d) { d.textContent = String(done); }
    var bar = document.getElementById("job-progress");
    if (bar && total > 0) { var pct = Math.floor(done * 100 / total); bar.value = pct; bar.textContent = pct + "%"; }
    var was = head.textContent;
    head.textContent = e.state; head.className = "jstate j-" + e.state;
    var ended = ["succeeded", "failed", "aborted", "cancelled"].indexOf(e.state) >= 0;
    if (ended && was !== e.state) {
      if (bodyTimer) { window.clearTimeout(bodyTimer); }
      refreshJob();
    } else if (!bodyTimer) {
      bodyTimer = window.setTimeout(refreshJob, 1000);
    }
  });
  // Behind the stream, or the session over: the page as the server has it now.
  es.addEventListener("lagged", function () { window.location.reload(); });
  es.addEventListener("ended", function () { es.close(); window.location.reload(); });
  // Leaving the page closes the stream at once: a browser keeps only a few connections to one
  // host, and streams of pages left behind (kept for the back button) would hold them. A page
  // shown again from that cache reloads, to be live and current again.
  window.addEventListener("pagehide", function () { es.close(); });
  window.addEventListener("pageshow", function (ev) { if (ev.persisted) { window.location.reload(); } });
})();
// The gateway page's chart: the last heartbeat's CPU and memory use, asked for every few
// seconds (GET …/host.json); each new heartbeat adds a point, the oldest leave after 60. An
// inline SVG redrawn from here, as the CSP allows no inline script.
(function () {
  "use strict";
  var svg = document.querySelector("svg[data-chart]");
  if (!svg || !window.fetch) { return; }
  var url = svg.getAttribute("data-chart");
  var last = document.getElementById("chart-last");
  var points = [], MAX = 60, seen = null;
  function draw() {
    var lines = svg.querySelectorAll("polyline[data-series]");
    for (var i = 0; i < lines.length; i++) {
      var key = lines[i].getAttribute("data-series"), out = [];
      for (var j = 0; j < points.length; j++) {
        var v = points[j][key];
        if (typeof v !== "number") { continue; }
        // The newest on the right edge; MAX points fill the width (2 s apart at most).
        var x = 300 - (300 * (points.length - 1 - j)) / (MAX - 1);
        out.push(x.toFixed(1) + "," + (95 - 0.9 * Math.max(0, Math.min(100, v))).toFixed(1));
      }
      // One point alone draws nothing: a short stroke at the right edge shows it.
      if (out.length === 1) { out.unshift("295.0," + out[0].split(",")[1]); }
      lines[i].setAttribute("points", out.join(" "));
    }
    svg.setAttribute("data-points", String(points.length));
  }
  function poll() {
    fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (p) {
        if (!p || p.at_ms === null || p.at_ms === seen) { return; }
        seen = p.at_ms;
        points.push(p);
        if (points.length > MAX) { points.shift(); }
        draw();
        if (last) {
          last.textContent = "last: CPU " + (p.cpu_pct === null ? "?" : p.cpu_pct.toFixed(1)) +
            "%, memory " + (p.mem_pct === null ? "?" : p.mem_pct.toFixed(1)) + "%";
        }
      })
      .catch(function () { /* the next tick tries again */ });
  }
  poll();
  var timer = window.setInterval(poll, 2000);
  window.addEventListener("pagehide", function () { window.clearInterval(timer); });
})();
