//! `csgctl call`: one request to one or many instances.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::time::Duration;

use csg_console::{CallError, CallOptions, Console, FanoutOptions, InstanceOutcome};
use csg_protocol::{ClientId, GroupId, InstanceId, MethodName, ReplyBody, RpcError};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};

use super::duration::format_duration;
use super::table::Table;
use super::{instances, out, read_arg_file, read_stdin, CallArgs, Exit, Usage};

pub const CALL_HELP: &str = "\
Output:
  One instance: the result as pretty JSON on stdout. A remote error prints
  `error: CODE: message` on stderr. With --noreply nothing is printed on stdout.
  Several instances (a comma-separated list or --instances-file): a progress bar on
  stderr when it is a terminal, then a table (instance, outcome, latency) and totals.
  --json: one JSON line per instance as each finishes:
    {\"instance\",\"id\",\"ok\":true,\"result\",\"ms\"}
    {\"instance\",\"id\",\"ok\":false,\"error\":{\"code\",\"message\",\"retryable\"},\"ms\"}
    {\"instance\",\"id\",\"ok\":false,\"no_reply\":true,\"ms\"}
    with --noreply, {\"instance\",\"id\",\"ok\":true,\"sent\":true,\"ms\"}

Retries: without a reply within --attempt-timeout the same request (same id) is sent
again; a retryable error (BUSY, UNAVAILABLE, TIMEOUT) is re-sent after a back-off;
both until --timeout. Agents run each request id once and answer repeats from a cache,
so running a command again with the --id it printed is safe.

Examples:
  csgctl call gw-001 sys.ping
  csgctl call gw-001,gw-002 sys.info --json
  echo '{\"name\":\"x\"}' | csgctl call gw-001 nfs.export.create -
  csgctl call --instances-file fleet.txt sys.ping --timeout 30s";

/// What a call command will do, checked before connecting.
#[derive(Debug)]
pub struct Plan {
    instances: Vec<InstanceId>,
    /// Several instances (or an instances file): fan-out output.
    fanout: bool,
    method: MethodName,
    params: Map<String, Value>,
}

pub fn plan(args: &CallArgs, group: &GroupId) -> anyhow::Result<Plan> {
    let (list, rest, fanout) = match &args.instances_file {
        Some(path) => {
            if args.args.len() > 2 {
                return Err(
                    Usage("with --instances-file, give only METHOD [PARAMS_JSON]".into()).into(),
                );
            }
            let text = read_arg_file(path)?;
            let list = instances::parse_file(&path.display().to_string(), &text).map_err(Usage)?;
            (list, &args.args[..], true)
        }
        None => {
            if args.args.len() < 2 {
                return Err(Usage("give INSTANCE METHOD [PARAMS_JSON]".into()).into());
            }
            let list = instances::parse_list(&args.args[0]).map_err(Usage)?;
            let fanout = list.len() > 1;
            (list, &args.args[1..], fanout)
        }
    };
    // Every instance must form a valid client ID with the group, or its topic cannot exist.
    for i in &list {
        ClientId::new(group.clone(), i.clone()).map_err(|e| Usage(e.to_string()))?;
    }
    let method = MethodName::new(rest[0].as_str()).map_err(|e| {
        let hint = if args.instances_file.is_some() {
            " (with --instances-file, leave INSTANCE out: METHOD [PARAMS_JSON])"
        } else {
            ""
        };
        Usage(format!("{e}{hint}"))
    })?;
    let params = match rest.get(1) {
        None => Map::new(),
        Some(p) if p == "-" => parse_params(&read_stdin()?)?,
        Some(p) => parse_params(p)?,
    };
    Ok(Plan {
        instances: list,
        fanout,
        method,
        params,
    })
}

pub(super) fn parse_params(text: &str) -> Result<Map<String, Value>, Usage> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(Usage(format!(
            "PARAMS_JSON must be a JSON object like {{\"name\":\"x\"}}, not {}",
            json_kind(&other)
        ))),
        Err(e) => Err(Usage(format!("PARAMS_JSON is not valid JSON: {e}"))),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub async fn run(
    console: &Console,
    args: &CallArgs,
    plan: Plan,
    signer: Option<csg_console::Signer>,
) -> anyhow::Result<Exit> {
    let opts = CallOptions {
        timeout: args.timeout,
        attempt_timeout: args.attempt_timeout,
        id: Some(args.id.clone().unwrap_or_else(|| console.new_request_id())),
        noreply: args.noreply,
        deadline: args.deadline,
        retry_errors: true,
        signer,
        group: None,
    };
    if plan.fanout || args.json {
        Ok(many(console, args, plan, opts).await)
    } else {
        single(console, plan, opts).await
    }
}

async fn single(console: &Console, plan: Plan, opts: CallOptions) -> anyhow::Result<Exit> {
    let instance = &plan.instances[0];
    let id = opts.id.clone().expect("set by run");
    let again = format!(
        "running the same command again with --id {id} is safe: the request will not run twice"
    );
    match console
        .call(instance, &plan.method, plan.params, &opts)
        .await
    {
        Ok(reply) => match reply.body {
            ReplyBody::Ok(_) if opts.noreply => {
                eprintln!("sent request {id} to {instance} (no reply requested)");
                Ok(Exit::Ok)
            }
            ReplyBody::Ok(result) => {
                out(&format!("{}\n", serde_json::to_string_pretty(&result)?));
                Ok(Exit::Ok)
            }
            ReplyBody::Err(e) => {
                eprintln!("error: {}", error_line(&e));
                if e.retryable {
                    eprintln!("hint: {again}");
                }
                Ok(Exit::RemoteError)
            }
        },
        Err(CallError::NoReply {
            attempts, waited, ..
        }) => {
            eprintln!(
                "error: no reply from {instance} to request {id} within {} ({attempts} attempt(s)); \
                 the instance may be offline or unreachable",
                format_duration(waited)
            );
            connection_note(console);
            eprintln!("hint: {again}");
            Ok(Exit::NoReply)
        }
        Err(CallError::NotAcknowledged {
            attempts, waited, ..
        }) => {
            eprintln!(
                "error: the broker did not acknowledge request {id} for {instance} within {} \
                 ({attempts} attempt(s))",
                format_duration(waited)
            );
            connection_note(console);
            eprintln!("hint: {again}");
            Ok(Exit::NoReply)
        }
        Err(CallError::ConnectionLost {
            reason,
            attempts,
            losses,
            size,
            waited,
            ..
        }) => {
            eprintln!(
                "error: the connection to the broker was lost ({reason}) while waiting for the \
                 reply to request {id} from {instance} ({attempts} attempt(s), {losses} \
                 connection loss(es) in {}); the gateway was not necessarily offline",
                format_duration(waited)
            );
            packet_limit_note(attempts, losses, size);
            eprintln!("hint: {again}");
            Ok(Exit::Failure)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(Exit::Failure)
        }
    }
}

/// When every send of a request was followed by a drop of the connection, the broker most
/// likely refuses a packet that large: Mosquitto, EMQX and others close the connection of a
/// client that publishes more than their packet limit, without saying why.
fn packet_limit_note(attempts: u32, losses: u32, size: usize) {
    if attempts > 0 && losses >= attempts {
        eprintln!(
            "note: the connection dropped after each of the {attempts} send(s) of this \
             {size}-byte request; a broker closes the connection of a client that publishes more \
             than its packet limit (Mosquitto max_packet_size, EMQX mqtt.max_packet_size)"
        );
    }
}

fn connection_note(console: &Console) {
    if !console.is_connected() {
        let why = console
            .last_connection_error()
            .unwrap_or_else(|| "unknown reason".into());
        eprintln!("note: the broker connection is down ({why})");
    }
}

/// `CODE: message (retryable)`.
fn error_line(e: &RpcError) -> String {
    let retry = if e.retryable { " (retryable)" } else { "" };
    format!("{}: {}{retry}", e.code, e.message)
}

async fn many(console: &Console, args: &CallArgs, plan: Plan, opts: CallOptions) -> Exit {
    let base = opts.id.clone().expect("set by run");
    let total = plan.instances.len();
    let bar = progress_bar(total as u64);
    let mut totals = Totals::default();
    let fanout = FanoutOptions {
        concurrency: args.concurrency as usize,
        // `--json` on one instance comes this way too; its id must be the same as without it.
        derive_ids: plan.fanout,
    };
    let outcomes = console
        .call_many(
            &plan.instances,
            &plan.method,
            &plan.params,
            &opts,
            &fanout,
            |o, done, _| {
                let kind = Kind::of(o, opts.noreply);
                totals.add(&kind);
                if args.json {
                    // Lines go out as calls finish, so a long fan-out can be followed live.
                    let line = format!("{}\n", json_line(o, &kind));
                    bar.suspend(|| out(&line));
                }
                bar.set_position(done as u64);
                bar.set_message(totals.summary());
            },
        )
        .await;
    bar.finish_and_clear();
    if !args.json {
        out(&format!(
            "{}{}\n",
            render_table(&outcomes, opts.noreply),
            totals.summary()
        ));
    }
    if let Some(reason) = outcomes.iter().find_map(|o| match &o.result {
        Err(CallError::ConnectionLost { reason, .. }) => Some(reason),
        _ => None,
    }) {
        eprintln!(
            "error: the connection to the broker was lost ({reason}) while waiting for replies; \
             the gateways marked failed were not necessarily offline"
        );
    }
    if totals.no_reply > 0 {
        eprintln!(
            "hint: running the same command again with --id {base} is safe: \
             no instance runs its request twice"
        );
    }
    totals.exit()
}

fn progress_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("[{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// How one instance's call ended.
#[derive(Debug)]
enum Kind<'a> {
    Ok(&'a Value),
    Sent,
    Error(&'a RpcError),
    NoReply,
    Failed(String),
}

impl<'a> Kind<'a> {
    fn of(o: &'a InstanceOutcome, noreply: bool) -> Self {
        match &o.result {
            Ok(reply) => match &reply.body {
                ReplyBody::Ok(_) if noreply => Kind::Sent,
                ReplyBody::Ok(v) => Kind::Ok(v),
                ReplyBody::Err(e) => Kind::Error(e),
            },
            Err(CallError::NoReply { .. } | CallError::NotAcknowledged { .. }) => Kind::NoReply,
            Err(e) => Kind::Failed(e.to_string()),
        }
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn json_line(o: &InstanceOutcome, kind: &Kind) -> Value {
    let (instance, id, ms) = (o.instance.as_str(), o.id.as_str(), millis(o.elapsed));
    match kind {
        Kind::Ok(v) => json!({"instance": instance, "id": id, "ok": true, "result": v, "ms": ms}),
        Kind::Sent => json!({"instance": instance, "id": id, "ok": true, "sent": true, "ms": ms}),
        Kind::Error(e) => {
            json!({"instance": instance, "id": id, "ok": false, "error": e, "ms": ms})
        }
        Kind::NoReply => {
            json!({"instance": instance, "id": id, "ok": false, "no_reply": true, "ms": ms})
        }
        Kind::Failed(m) => {
            json!({"instance": instance, "id": id, "ok": false, "failed": m, "ms": ms})
        }
    }
}

fn render_table(outcomes: &[InstanceOutcome], noreply: bool) -> String {
    let mut t = Table::new(&["INSTANCE", "OUTCOME", "MS", "DETAIL"]).align_right(2);
    for o in outcomes {
        let (outcome, detail) = match Kind::of(o, noreply) {
            Kind::Ok(_) => ("ok".to_string(), String::new()),
            Kind::Sent => ("sent".to_string(), String::new()),
            Kind::Error(e) => (format!("error {}", e.code), shorten(&e.message, 80)),
            Kind::NoReply => ("no reply".to_string(), String::new()),
            Kind::Failed(m) => ("failed".to_string(), shorten(&m, 80)),
        };
        t.push(vec![
            o.instance.to_string(),
            outcome,
            format!("{:.1}", millis(o.elapsed)),
            detail,
        ]);
    }
    t.render()
}

fn shorten(s: &str, max: usize) -> String {
    let one_line = s.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut cut: String = one_line.chars().take(max - 1).collect();
        cut.push('…');
        cut
    }
}

/// Counts by outcome, for the totals line and the exit code.
#[derive(Debug, Default)]
struct Totals {
    ok: usize,
    errors: BTreeMap<String, usize>,
    no_reply: usize,
    failed: usize,
}

impl Totals {
    fn add(&mut self, kind: &Kind) {
        match kind {
            Kind::Ok(_) | Kind::Sent => self.ok += 1,
            Kind::Error(e) => *self.errors.entry(e.code.to_string()).or_default() += 1,
            Kind::NoReply => self.no_reply += 1,
            Kind::Failed(_) => self.failed += 1,
        }
    }

    fn error_count(&self) -> usize {
        self.errors.values().sum()
    }

    /// `ok 8, errors 1 (NOT_FOUND 1), no reply 1`.
    fn summary(&self) -> String {
        let mut s = format!("ok {}, errors {}", self.ok, self.error_count());
        if !self.errors.is_empty() {
            let by_code: Vec<String> = self
                .errors
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            s.push_str(&format!(" ({})", by_code.join(", ")));
        }
        s.push_str(&format!(", no reply {}", self.no_reply));
        if self.failed > 0 {
            s.push_str(&format!(", failed {}", self.failed));
        }
        s
    }

    fn exit(&self) -> Exit {
        Exit::for_counts(self.failed, self.error_count(), self.no_reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csg_protocol::{ErrorCode, Reply, RequestId};

    fn outcome(instance: &str, ms: u64, result: Result<Reply, CallError>) -> InstanceOutcome {
        InstanceOutcome {
            instance: InstanceId::new(instance).unwrap(),
            id: RequestId::new(format!("op:{instance}")).unwrap(),
            result,
            elapsed: Duration::from_millis(ms),
        }
    }

    fn sample() -> Vec<InstanceOutcome> {
        let id = |s: &str| RequestId::new(s).unwrap();
        vec![
            outcome(
                "gw-1",
                3,
                Ok(Reply::ok(id("op:gw-1"), json!({"pong": true}))),
            ),
            outcome(
                "gw-22",
                12,
                Ok(Reply::err(
                    Some(id("op:gw-22")),
                    RpcError::new(ErrorCode::NotFound, "no such export"),
                )),
            ),
            outcome(
                "gw-3",
                10_000,
                Err(CallError::NoReply {
                    instance: InstanceId::new("gw-3").unwrap(),
                    id: id("op:gw-3"),
                    attempts: 5,
                    waited: Duration::from_secs(10),
                }),
            ),
        ]
    }

    #[test]
    fn table_and_totals() {
        let outcomes = sample();
        assert_eq!(
            render_table(&outcomes, false),
            "INSTANCE  OUTCOME               MS  DETAIL\n\
             gw-1      ok                   3.0\n\
             gw-22     error NOT_FOUND     12.0  no such export\n\
             gw-3      no reply         10000.0\n"
        );
        let mut totals = Totals::default();
        for o in &outcomes {
            totals.add(&Kind::of(o, false));
        }
        assert_eq!(totals.summary(), "ok 1, errors 1 (NOT_FOUND 1), no reply 1");
        assert_eq!(totals.exit(), Exit::RemoteError);
    }

    #[test]
    fn exit_without_errors_is_no_reply() {
        let outcomes = sample();
        let mut totals = Totals::default();
        for o in [&outcomes[0], &outcomes[2]] {
            totals.add(&Kind::of(o, false));
        }
        assert_eq!(totals.exit(), Exit::NoReply);
        let mut all_ok = Totals::default();
        all_ok.add(&Kind::of(&outcomes[0], false));
        assert_eq!(all_ok.exit(), Exit::Ok);
    }

    #[test]
    fn json_lines() {
        let outcomes = sample();
        let lines: Vec<Value> = outcomes
            .iter()
            .map(|o| json_line(o, &Kind::of(o, false)))
            .collect();
        assert_eq!(
            lines[0],
            json!({"instance":"gw-1","id":"op:gw-1","ok":true,"result":{"pong":true},"ms":3.0})
        );
        assert_eq!(lines[1]["error"]["code"], "NOT_FOUND");
        assert_eq!(lines[1]["error"]["retryable"], false);
        assert_eq!(lines[2]["no_reply"], true);
        assert_eq!(
            json_line(&outcomes[0], &Kind::of(&outcomes[0], true))["sent"],
            true
        );
    }

    #[test]
    fn params_must_be_an_object() {
        assert!(parse_params(r#"{"a":1}"#).is_ok());
        assert!(parse_params("{}").unwrap().is_empty());
        assert!(parse_params("[1]").unwrap_err().0.contains("an array"));
        assert!(parse_params("{").unwrap_err().0.contains("not valid JSON"));
    }

    #[test]
    fn error_lines() {
        let e = RpcError::new(ErrorCode::Busy, "queue full");
        assert_eq!(error_line(&e), "BUSY: queue full (retryable)");
        let e = RpcError::new(ErrorCode::Conflict, "exists");
        assert_eq!(error_line(&e), "CONFLICT: exists");
    }
}
