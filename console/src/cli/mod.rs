//! The `csgctl` command line. It sits in the library, private but for [`main`] and
//! [`command`], so that the packaging task builds the man pages and shell completions from the
//! very definitions the binary parses; it uses the rest of the library only through its public
//! API, as any other program would.

mod bench_cmd;
mod call_cmd;
mod duration;
mod instances;
mod keys_cmd;
mod render;
mod storage_cmd;
mod table;
mod watch_cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgAction, Args, Parser, Subcommand};
use csg_console::{Console, ConsoleOptions};
use csg_protocol::{
    BrokerList, BrokerUrl, GroupId, InstanceId, MethodName, TopicMode, TopicParents,
};

use duration::positive_duration;

const EXIT_CODES: &str = "\
Exit codes:
  0  success: every instance answered ok (call, bench), or watch ended normally
  1  at least one instance answered with an error (and no local failure)
  2  bad arguments
  3  no reply: at least one instance did not answer in time (and none answered with an error)
  4  local failure: the broker could not be reached or refused us, csgctl's own broker
     connection was lost while it waited (\"the connection to the broker was lost (…); the
     gateway was not necessarily offline\": e.g. the broker restarted, or closed the
     connection over a request above its packet limit), or another local error

With several instances the worst outcome decides: 4, then 1, then 3, then 0.";

const WATCH_HELP: &str = "\
Output:
  On a terminal: a table redrawn every second (instance, presence, age of the last
  heartbeat, seq, cpu%, load1, memory used/total, uptime).
  Otherwise: one plain line per event.
  --json: one JSON line per event, {\"topic\":…,\"event\":<the heartbeat or presence body>}.
  Presence is retained by the broker, so each instance's last presence arrives first.";

#[derive(Debug, Parser)]
#[command(
    name = "csgctl",
    version,
    about = "Send commands to csg-agent storage gateways and watch their status over MQTT",
    after_help = EXIT_CODES
)]
struct Cli {
    #[arg(
        long,
        help = "Broker URL: mqtt://host[:port] (plain TCP, port 1883) or mqtts://host[:port] (TLS, port 8883); several (repeat the option or separate with commas) are tried in turn",
        global = true,
        help_heading = "Global options",
        env = "CSG_BROKER",
        default_value = "mqtt://127.0.0.1:1883",
        value_delimiter = ',',
        action = clap::ArgAction::Append,
        value_parser = parse_broker
    )]
    broker: Vec<BrokerUrl>,

    /// Group id: the first half of every client ID (GROUP@@@INSTANCE)
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "CSG_GROUP_ID",
        default_value = "GID_csg"
    )]
    group_id: GroupId,

    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        help = "This console's id [default: csgctl-PID-XXXX]; replies come to csg-up/CONSOLE_ID"
    )]
    console_id: Option<InstanceId>,

    /// Parent topic of commands
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        default_value = "csg-down"
    )]
    topic_down: String,

    /// Parent topic of replies
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        default_value = "csg-up"
    )]
    topic_up: String,

    /// Parent topic of heartbeats and presence
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        default_value = "csg-status"
    )]
    topic_status: String,

    /// Alibaba Cloud MQTT point-to-point topics (csg-down/p2p/GROUP@@@INSTANCE)
    #[arg(long, global = true, help_heading = "Global options")]
    p2p: bool,

    /// With --p2p: subscribe the P2P reply topic (for brokers without native P2P delivery)
    #[arg(long, global = true, help_heading = "Global options", requires = "p2p")]
    subscribe_p2p: bool,

    /// MQTT version towards the broker: "3.1.1" or "5" (on 5 a request carries a Message
    /// Expiry Interval from its deadline)
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "CSG_MQTT_PROTOCOL",
        default_value = "3.1.1"
    )]
    mqtt_protocol: csg_console::Protocol,

    /// How long to wait for the broker connection. With several brokers each connect
    /// attempt gets an equal share (whole seconds, at least 1 s), so a silent one cannot use
    /// up the wait; a refusal for a passing reason (server unavailable or busy) moves on to
    /// the next broker, bad credentials or TLS problems end the wait at once
    #[arg(long, global = true,
        help_heading = "Global options", default_value = "5s", value_parser = positive_duration)]
    connect_timeout: Duration,

    #[command(flatten)]
    security: SecurityArgs,

    #[command(flatten)]
    signing: keys_cmd::SignArgs,

    /// Debug logs on stderr (-vv: include the MQTT client's); RUST_LOG overrides
    #[arg(short, long, global = true,
        help_heading = "Global options", action = ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

/// TLS and broker authentication: the same choices as the agent's `[mqtt.tls]` and
/// `[mqtt.auth]`. The authentication mode follows from the flags given.
#[derive(Debug, Args)]
struct SecurityArgs {
    /// mqtts://: PEM bundle of the CAs to trust [default: the system's roots]
    #[arg(
        long,
        global = true,
        help_heading = "Broker security",
        env = "CSG_CA_FILE",
        value_name = "FILE"
    )]
    ca_file: Option<PathBuf>,

    /// mqtts://: verify the broker's certificate against NAME instead of the URL's host
    #[arg(
        long,
        global = true,
        help_heading = "Broker security",
        env = "CSG_SERVER_NAME",
        value_name = "NAME"
    )]
    server_name: Option<String>,

    /// mqtts://: client certificate (PEM) for mutual TLS
    #[arg(
        long,
        global = true,
        help_heading = "Broker security",
        env = "CSG_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    client_cert: Option<PathBuf>,

    /// mqtts://: the client certificate's private key (PEM)
    #[arg(
        long,
        global = true,
        help_heading = "Broker security",
        env = "CSG_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,

    /// Password authentication: the username
    #[arg(
        long,
        global = true,
        help_heading = "Broker security",
        env = "CSG_USERNAME",
        requires = "password_file"
    )]
    username: Option<String>,

    /// Password authentication: file holding the password (one line; never printed)
    #[arg(
        long,
        global = true,
        help_heading = "Broker security",
        env = "CSG_PASSWORD_FILE",
        value_name = "FILE",
        requires = "username"
    )]
    password_file: Option<PathBuf>,

    /// Alibaba Cloud MQTT: the AccessKey ID (signature or token mode)
    #[arg(
        long,
        global = true,
        help_heading = "Broker security",
        env = "CSG_ALIBABA_ACCESS_KEY_ID",
        value_name = "ID",
        requires = "alibaba_instance_id"
    )]
    alibaba_access_key_id: Option<String>,

    /// Alibaba Cloud MQTT: the MQTT instance id (e.g. mqtt-cn-…)
    #[arg(
        long,
        global = true,
        help_heading = "Broker security",
        env = "CSG_ALIBABA_INSTANCE_ID",
        value_name = "ID",
        requires = "alibaba_access_key_id"
    )]
    alibaba_instance_id: Option<String>,

    /// Alibaba signature mode: file holding the AccessKey secret
    #[arg(long, global = true, help_heading = "Broker security", env = "CSG_ALIBABA_SECRET_FILE",
        value_name = "FILE", requires = "alibaba_access_key_id",
        conflicts_with_all = ["alibaba_token_file", "password_file"])]
    alibaba_secret_file: Option<PathBuf>,

    /// Alibaba token mode: file holding the token string (R|…, W|…, RW|… pairs)
    #[arg(
        long,
        global = true,
        help_heading = "Broker security",
        env = "CSG_ALIBABA_TOKEN_FILE",
        value_name = "FILE",
        requires = "alibaba_access_key_id",
        conflicts_with = "password_file"
    )]
    alibaba_token_file: Option<PathBuf>,
}

impl SecurityArgs {
    fn tls(&self) -> csg_transport::TlsOptions {
        csg_transport::TlsOptions {
            ca_file: self.ca_file.clone(),
            server_name: self.server_name.clone(),
            client_cert_file: self.client_cert.clone(),
            client_key_file: self.client_key.clone(),
        }
    }

    fn auth(&self) -> anyhow::Result<csg_transport::Auth> {
        use csg_transport::Auth;
        let alibaba = || {
            (
                self.alibaba_access_key_id.clone().unwrap_or_default(),
                self.alibaba_instance_id.clone().unwrap_or_default(),
            )
        };
        Ok(match (&self.password_file, &self.alibaba_secret_file, &self.alibaba_token_file) {
            (Some(password_file), None, None) => Auth::Password {
                username: self.username.clone().unwrap_or_default(),
                password_file: password_file.clone(),
            },
            (None, Some(secret), None) => {
                let (access_key_id, instance_id) = alibaba();
                Auth::AlibabaSignature {
                    access_key_id,
                    instance_id,
                    access_key_secret_file: secret.clone(),
                }
            }
            (None, None, Some(token)) => {
                let (access_key_id, instance_id) = alibaba();
                Auth::AlibabaToken {
                    access_key_id,
                    instance_id,
                    token_file: token.clone(),
                }
            }
            (None, None, None) if self.alibaba_access_key_id.is_some() => {
                return Err(Usage(
                    "--alibaba-access-key-id needs --alibaba-secret-file (signature mode) or --alibaba-token-file (token mode)"
                        .into(),
                )
                .into())
            }
            (None, None, None) => Auth::None,
            _ => {
                return Err(
                    Usage("choose one authentication mode: --password-file, --alibaba-secret-file or --alibaba-token-file".into())
                        .into(),
                )
            }
        })
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send a request to one or more instances and print the reply
    #[command(after_help = call_cmd::CALL_HELP)]
    Call(CallArgs),
    /// Show heartbeats and presence as they arrive
    #[command(after_help = WATCH_HELP)]
    Watch(WatchArgs),
    /// Measure request/reply latency and throughput against one instance
    Bench(BenchArgs),
    /// NFS exports: create, update, delete, get, list
    #[command(subcommand)]
    Nfs(storage_cmd::NfsCmd),
    /// SMB shares and users
    #[command(subcommand)]
    Smb(storage_cmd::SmbCmd),
    /// iSCSI targets
    #[command(subcommand)]
    Iscsi(storage_cmd::IscsiCmd),
    /// Make an Ed25519 key pair for signed commands (PREFIX.key and PREFIX.pub)
    Keygen(keys_cmd::KeygenArgs),
}

#[derive(Debug, Args)]
#[command(
    override_usage = "csgctl call [OPTIONS] INSTANCE[,INSTANCE...] METHOD [PARAMS_JSON]\n       \
                            csgctl call [OPTIONS] --instances-file FILE METHOD [PARAMS_JSON]"
)]
pub struct CallArgs {
    #[arg(
        value_name = "ARGS",
        required = true,
        num_args = 1..=3,
        help = "INSTANCE[,INSTANCE...] METHOD [PARAMS_JSON]; PARAMS_JSON is a JSON object, or - \
                to read it from stdin. With --instances-file, INSTANCE is left out."
    )]
    args: Vec<String>,

    /// Read instance ids from FILE (one per line; # comments and blank lines are ignored)
    #[arg(long, value_name = "FILE")]
    instances_file: Option<PathBuf>,

    /// Give up waiting for a reply after this long
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    timeout: Duration,

    /// Re-send the same request (same id) when no reply came within this long
    #[arg(long, default_value = "2s", value_parser = positive_duration)]
    attempt_timeout: Duration,

    /// Request id; repeat an earlier call's id to re-send it safely (it will not run twice).
    /// With several instances, each gets ID:INSTANCE.
    #[arg(long)]
    id: Option<csg_protocol::RequestId>,

    /// One-way: ask for no reply; exit once the broker has acknowledged the request
    #[arg(long)]
    noreply: bool,

    /// Ask the agent not to run the request after this long from now
    #[arg(long, value_parser = positive_duration)]
    deadline: Option<Duration>,

    /// One JSON line per instance instead of the human output
    #[arg(long)]
    json: bool,

    /// With several instances: calls in flight at once
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[arg(help = "Instances to watch [default: all]")]
    instances: Vec<InstanceId>,

    /// Read more instance ids from FILE (one per line; # comments and blank lines are ignored)
    #[arg(long, value_name = "FILE")]
    instances_file: Option<PathBuf>,

    /// One JSON line per event: {"topic":…,"event":…}
    #[arg(long)]
    json: bool,

    /// Exit after N events
    #[arg(long, value_name = "N")]
    count: Option<u64>,

    /// Wait until N instances are online (their latest presence, retained ones included, says
    /// online), print one JSON line {"online":N,"elapsed_ms":…} and exit 0. For scripts that
    /// wait for a fleet to come up.
    #[arg(long, value_name = "N", conflicts_with = "count")]
    until_online: Option<usize>,

    /// With --until-online: give up after this long (exit 3, with the count reached)
    #[arg(long, value_parser = positive_duration, requires = "until_online")]
    timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The instance to measure against
    instance: InstanceId,

    /// Requests to measure (after the warm-up)
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,

    /// Requests kept outstanding at once
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65_535))]
    concurrency: u32,

    /// Method to call
    #[arg(long, default_value = "sys.ping", value_parser = parse_method)]
    method: MethodName,

    /// Params of every request, a JSON object (default: none)
    #[arg(long, value_name = "JSON", value_parser = parse_params_object)]
    params: Option<serde_json::Map<String, serde_json::Value>>,

    /// Unmeasured requests sent first
    #[arg(long, default_value_t = 200)]
    warmup: u64,

    /// A request without a reply after this long counts as lost (it is not re-sent)
    #[arg(long, default_value = "5s", value_parser = positive_duration)]
    timeout: Duration,

    /// Print one JSON object instead of the human summary
    #[arg(long)]
    json: bool,
}

/// Process exit codes; see [`EXIT_CODES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    Ok = 0,
    RemoteError = 1,
    Usage = 2,
    NoReply = 3,
    Failure = 4,
}

impl Exit {
    /// The exit code for a set of outcomes: a local failure outranks a remote error, which
    /// outranks a missing reply. A remote error comes first because repeating the command
    /// will not fix it, while a missing reply may go away on its own.
    pub fn for_counts(failed: usize, errors: usize, no_reply: usize) -> Exit {
        if failed > 0 {
            Exit::Failure
        } else if errors > 0 {
            Exit::RemoteError
        } else if no_reply > 0 {
            Exit::NoReply
        } else {
            Exit::Ok
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// A bad argument found after parsing (exit 2).
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// The `csgctl` program.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // One rustls crypto provider (ring) for the whole process, before anything uses TLS.
    csg_transport::install_crypto_provider();
    init_logging(cli.verbose);
    // One thread: the console's work per request is tiny, and keeping the caller and the
    // connection task on one thread saves a cross-thread wake-up on every send and reply.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Failure.into();
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<Usage>().is_some() {
                Exit::Usage.into()
            } else {
                Exit::Failure.into()
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<Exit> {
    // Validate a command's arguments before connecting, so usage errors never wait on a broker.
    match &cli.command {
        Command::Keygen(args) => keys_cmd::keygen(args),
        Command::Call(args) => {
            let plan = call_cmd::plan(args, &cli.group_id)?;
            let signer = keys_cmd::signer(&cli.signing)?;
            let console = connect(&cli).await?;
            let exit = call_cmd::run(&console, args, plan, signer).await;
            console.disconnect().await;
            exit
        }
        Command::Watch(args) => {
            let filter = watch_cmd::filter(args)?;
            let console = connect(&cli).await?;
            let exit = watch_cmd::run(&console, args, filter).await;
            console.disconnect().await;
            exit
        }
        Command::Bench(args) => {
            let signer = keys_cmd::signer(&cli.signing)?;
            let console = connect(&cli).await?;
            let exit = bench_cmd::run(&console, args, signer).await;
            console.disconnect().await;
            exit
        }
        Command::Nfs(cmd) => storage(&cli, storage_cmd::nfs(cmd)?).await,
        Command::Smb(cmd) => storage(&cli, storage_cmd::smb(cmd)?).await,
        Command::Iscsi(cmd) => storage(&cli, storage_cmd::iscsi(cmd)?).await,
    }
}

async fn storage(cli: &Cli, req: storage_cmd::Request<'_>) -> anyhow::Result<Exit> {
    let signer = keys_cmd::signer(&cli.signing)?;
    let console = connect(cli).await?;
    let exit = storage_cmd::run(&console, req, signer).await;
    console.disconnect().await;
    exit
}

/// The clap definition of `csgctl`, for generated documentation.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

async fn connect(cli: &Cli) -> anyhow::Result<Console> {
    let console_id = match &cli.console_id {
        Some(id) => id.clone(),
        None => default_console_id(),
    };
    let brokers =
        BrokerList::new(cli.broker.clone()).map_err(|e| Usage(format!("--broker: {e}")))?;
    let mut opts = ConsoleOptions::new(brokers, cli.group_id.clone(), console_id);
    opts.parents = TopicParents {
        down: cli.topic_down.clone(),
        up: cli.topic_up.clone(),
        status: cli.topic_status.clone(),
    };
    let bad_topics = opts.parents.validate();
    if let Some(e) = bad_topics.first() {
        return Err(Usage(e.to_string()).into());
    }
    opts.mode = if cli.p2p {
        TopicMode::P2p {
            subscribe: cli.subscribe_p2p,
        }
    } else {
        TopicMode::Standard
    };
    opts.connect_timeout = cli.connect_timeout;
    opts.protocol = cli.mqtt_protocol;
    opts.tls = cli.security.tls();
    opts.auth = cli.security.auth()?;
    match Console::connect(opts).await {
        Ok(c) => Ok(c),
        Err(
            e @ (csg_console::ConsoleError::Tls { .. }
            | csg_console::ConsoleError::Auth(_)
            | csg_console::ConsoleError::Identity(_)),
        ) => Err(Usage(e.to_string()).into()),
        Err(e) => Err(e.into()),
    }
}

/// `csgctl-{pid}-{4 random}`: unique enough that two csgctl runs never share a client ID
/// (the broker would disconnect one of them) or a reply topic.
fn default_console_id() -> InstanceId {
    let suffix: String = (0..4)
        .map(|_| fastrand::alphanumeric().to_ascii_lowercase())
        .collect();
    InstanceId::new(format!("csgctl-{}-{suffix}", std::process::id()))
        .expect("pid and alphanumerics form a valid id")
}

fn parse_broker(s: &str) -> Result<BrokerUrl, String> {
    BrokerUrl::parse(s).map_err(|e| e.to_string())
}

fn parse_params_object(s: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    call_cmd::parse_params(s).map_err(|u| u.0)
}

fn parse_method(s: &str) -> Result<MethodName, String> {
    MethodName::new(s).map_err(|e| e.to_string())
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::new(v),
        _ => EnvFilter::new(match verbose {
            0 => "warn",
            1 => "warn,csg_console=debug,csgctl=debug",
            _ => "debug",
        }),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(verbose > 0)
        .init();
}

/// Writes to stdout. A reader that went away (`| head`) is not an error worth a panic: the
/// remaining output is simply dropped.
pub fn out(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// Reads a file given on the command line; a missing file is a usage error.
fn read_arg_file(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Usage(format!("cannot read {}: {e}", path.display())).into())
}

/// Reads all of stdin (for `-` arguments).
fn read_stdin() -> anyhow::Result<String> {
    std::io::read_to_string(std::io::stdin()).context("cannot read stdin")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exit_code_rule() {
        assert_eq!(Exit::for_counts(0, 0, 0), Exit::Ok);
        assert_eq!(Exit::for_counts(0, 0, 2), Exit::NoReply);
        assert_eq!(Exit::for_counts(0, 1, 0), Exit::RemoteError);
        assert_eq!(Exit::for_counts(0, 1, 5), Exit::RemoteError);
        assert_eq!(Exit::for_counts(1, 1, 1), Exit::Failure);
        assert_eq!(Exit::RemoteError as u8, 1);
        assert_eq!(Exit::Usage as u8, 2);
        assert_eq!(Exit::NoReply as u8, 3);
        assert_eq!(Exit::Failure as u8, 4);
    }

    #[test]
    fn defaults_and_env_free_parsing() {
        let cli = Cli::try_parse_from(["csgctl", "call", "gw-1", "sys.ping"]).unwrap();
        assert_eq!(
            BrokerList::new(cli.broker.clone()).unwrap().to_string(),
            "mqtt://127.0.0.1:1883"
        );
        // Several brokers: repeated, comma-separated, or both, in the order given.
        let cli = Cli::try_parse_from([
            "csgctl",
            "--broker",
            "mqtt://a,mqtt://b",
            "--broker",
            "mqtt://c:1",
            "call",
            "gw-1",
            "sys.ping",
        ])
        .unwrap();
        assert_eq!(
            BrokerList::new(cli.broker.clone()).unwrap().to_string(),
            "mqtt://a:1883,mqtt://b:1883,mqtt://c:1"
        );
        let cli = Cli::try_parse_from(["csgctl", "call", "gw-1", "sys.ping"]).unwrap();
        let Command::Call(args) = cli.command else {
            panic!("not a call")
        };
        assert_eq!(args.timeout, Duration::from_secs(10));
        assert_eq!(args.attempt_timeout, Duration::from_secs(2));
        // Global options are accepted after the subcommand too.
        let cli = Cli::try_parse_from(["csgctl", "watch", "--p2p", "--subscribe-p2p"]).unwrap();
        assert!(cli.p2p && cli.subscribe_p2p);
        assert!(Cli::try_parse_from(["csgctl", "watch", "--subscribe-p2p"]).is_err());
        assert!(Cli::try_parse_from(["csgctl", "call", "a", "m", "{}", "extra"]).is_err());
        assert!(Cli::try_parse_from(["csgctl", "call", "a", "m", "--timeout", "5"]).is_err());
    }

    #[test]
    fn security_flags_choose_the_auth_mode() {
        use csg_transport::Auth;
        let parse = |extra: &[&str]| {
            let mut args = vec!["csgctl", "call", "gw-1", "sys.ping"];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args)
        };
        let cli = parse(&[]).unwrap();
        assert_eq!(cli.security.auth().unwrap(), Auth::None);
        assert!(!cli.security.tls().is_set());
        let cli = parse(&["--username", "u", "--password-file", "/p"]).unwrap();
        assert!(matches!(
            cli.security.auth().unwrap(),
            Auth::Password { .. }
        ));
        let cli = parse(&[
            "--alibaba-access-key-id",
            "AK",
            "--alibaba-instance-id",
            "mqtt-cn-1",
            "--alibaba-secret-file",
            "/s",
        ])
        .unwrap();
        assert!(matches!(
            cli.security.auth().unwrap(),
            Auth::AlibabaSignature { .. }
        ));
        let cli = parse(&[
            "--alibaba-access-key-id",
            "AK",
            "--alibaba-instance-id",
            "mqtt-cn-1",
        ])
        .unwrap();
        assert!(cli.security.auth().is_err());
        // Half a client identity, a password without a user, or two modes at once.
        assert!(parse(&["--client-cert", "/c"]).is_err());
        assert!(parse(&["--password-file", "/p"]).is_err());
        assert!(parse(&[
            "--username",
            "u",
            "--password-file",
            "/p",
            "--alibaba-access-key-id",
            "AK",
            "--alibaba-instance-id",
            "i",
            "--alibaba-token-file",
            "/t"
        ])
        .is_err());
    }

    #[test]
    fn console_ids_are_valid_and_vary() {
        let a = default_console_id();
        assert!(a.as_str().starts_with("csgctl-"));
        let ids: std::collections::HashSet<_> = (0..50).map(|_| default_console_id()).collect();
        assert!(ids.len() > 40);
    }
}
