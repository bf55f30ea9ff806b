//! Start-up: the command line, config validation (at start and by `check-config`), the
//! 64-character rules, and the MQTT session the agent opens.

use csg_e2e::agent::{check_config, run_args, run_to_exit};
use csg_e2e::bed::wait_online;
use csg_e2e::{Agent, AgentConfig, Bed, Broker, Mark, Recorder, TIMEOUT};
use serde_json::json;

/// A config no broker is behind: validation must not need one.
fn cfg(instance: &str) -> AgentConfig {
    AgentConfig::new(instance, "mqtt://127.0.0.1:1")
}

fn all_output(out: &csg_e2e::CmdOutput) -> String {
    format!("{}{}", out.stdout, out.stderr)
}

#[test]
fn version_prints_the_workspace_version() {
    let out = run_args(&["--version"]);
    out.assert_code(0);
    assert!(
        out.stdout.contains(csg_e2e::WORKSPACE_VERSION),
        "--version should print {}\n{}",
        csg_e2e::WORKSPACE_VERSION,
        out.describe()
    );
}

#[test]
fn check_config_accepts_the_full_documented_config() {
    let out = check_config(&cfg("gw-1").to_toml());
    out.assert_code(0);
    assert!(all_output(&out).contains("config OK"), "{}", out.describe());
}

#[test]
fn check_config_accepts_the_minimal_config() {
    // Only identity and broker are required; everything else has a default.
    let out = check_config(
        "[identity]\ngroup_id = \"GID_csg\"\ninstance_id = \"gw-001\"\n\n\
         [mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n",
    );
    out.assert_code(0);
    assert!(all_output(&out).contains("config OK"), "{}", out.describe());
}

#[test]
fn check_config_lists_every_problem_at_once() {
    let mut c = cfg("i");
    // Three independent problems in three sections.
    c.group_id = "G".repeat(30);
    c.instance_id = "i".repeat(34); // client ID: 30 + 3 + 34 = 67 characters
    c.keep_alive_s = 1; // allowed: 5..=65535
    c.url = "http://127.0.0.1:1883".into();
    let out = check_config(&c.to_toml());
    out.assert_code(2);
    let err = &out.stderr;
    assert!(
        err.contains("limit is 64"),
        "client ID over 64 not reported\n{}",
        out.describe()
    );
    assert!(
        err.contains(&"G".repeat(30)),
        "the bad value is not named\n{}",
        out.describe()
    );
    assert!(
        err.contains("keep_alive_s"),
        "keep_alive_s not reported\n{}",
        out.describe()
    );
    assert!(
        err.contains("http://127.0.0.1:1883"),
        "bad URL not reported\n{}",
        out.describe()
    );
    assert!(
        !all_output(&out).contains("config OK"),
        "{}",
        out.describe()
    );
}

#[test]
fn check_config_refuses_an_exports_file_the_system_exportfs_never_reads() {
    let mut c = cfg("gw-exports");
    // Storage needs its roots and state directory; nothing is created by check-config.
    c.storage = Some(csg_e2e::config::StorageSection::new(
        std::path::Path::new("/srv/csg"),
        std::path::Path::new("/var/lib/csg-agent"),
    ));
    c.nfs = Some(csg_e2e::config::NfsSection::kernel(
        std::path::Path::new("/srv/nfs/csg-agent.exports"),
        std::path::Path::new("/usr/sbin/exportfs"),
    ));
    let out = check_config(&c.to_toml());
    out.assert_code(2);
    assert!(
        out.stderr.contains("nfs.exports_file") && out.stderr.contains("/etc/exports.d"),
        "{}",
        out.describe()
    );
}

#[test]
fn check_config_refuses_unknown_keys() {
    let toml = cfg("gw-1")
        .to_toml()
        .replace("[agent]\n", "[agent]\ncolour = \"blue\"\n");
    let out = check_config(&toml);
    out.assert_code(2);
    assert!(
        out.stderr.contains("colour"),
        "the unknown key is not named\n{}",
        out.describe()
    );
}

#[test]
fn a_client_id_over_64_characters_is_refused_at_start() {
    let mut c = cfg("i");
    c.group_id = "G".repeat(30);
    c.instance_id = "i".repeat(32); // 65 characters
    let out = run_to_exit(&c.to_toml(), &[]);
    out.assert_code(2);
    assert!(out.stderr.contains("limit is 64"), "{}", out.describe());
    assert!(
        out.stderr
            .contains(&format!("{}@@@{}", c.group_id, c.instance_id)),
        "the message should name the client ID\n{}",
        out.describe()
    );
    // Exactly 64 is fine.
    c.instance_id = "i".repeat(31);
    check_config(&c.to_toml()).assert_code(0);
}

#[test]
fn a_topic_over_64_characters_is_refused_at_start_and_by_check_config() {
    let mut c = cfg("i");
    c.group_id = "G".into();
    // Client ID 59 characters (fine); heartbeat topic 66 and presence topic 75 (too long).
    c.instance_id = "i".repeat(55);
    let heartbeat = c.heartbeat_topic();
    let presence = c.presence_topic();

    let out = run_to_exit(&c.to_toml(), &[]);
    out.assert_code(2);
    assert!(out.stderr.contains("limit is 64"), "{}", out.describe());

    let out = check_config(&c.to_toml());
    out.assert_code(2);
    assert!(
        out.stderr.contains(&presence),
        "presence topic not reported\n{}",
        out.describe()
    );
    let heartbeat_named = out
        .stderr
        .match_indices(&heartbeat)
        .any(|(i, _)| !out.stderr[i + heartbeat.len()..].starts_with("/presence"));
    assert!(
        heartbeat_named,
        "heartbeat topic not reported\n{}",
        out.describe()
    );

    // The limit is configurable (for brokers with longer topics).
    c.max_len = 128;
    check_config(&c.to_toml()).assert_code(0);
}

#[test]
fn a_long_parent_topic_is_refused_at_start() {
    let mut c = cfg("gw-1");
    c.down = format!("csg-down-{}", "x".repeat(60));
    let out = run_to_exit(&c.to_toml(), &[]);
    out.assert_code(2);
    assert!(out.stderr.contains("limit is 64"), "{}", out.describe());
}

#[test]
fn the_run_subcommand_runs_the_agent_too() {
    let broker = Broker::start();
    let rec = Recorder::connect(broker.port(), &["#"]);
    let c = AgentConfig::new("gw-run", &broker.url());
    let mut agent = Agent::spawn_with(&c, &["run"]);
    if wait_online(&rec, Mark::default(), &c, TIMEOUT).is_none() {
        panic!(
            "`csg-agent run --config` did not come online (exit: {:?})",
            agent.try_status()
        );
    }
}

#[test]
fn the_session_is_mqtt_3_1_1_clean_with_the_configured_keep_alive_and_a_retained_will() {
    let bed = Bed::start("gw-session");
    let cid = bed.client_id();
    assert_eq!(
        bed.broker.connect_flags_of(&cid),
        Some(format!("p{}, c1, k5", if csg_e2e::mqtt5() { 5 } else { 2 })),
        "MQTT 3.1.1 (p2) or 5 (p5) as the run asks, clean session (c1), keep-alive 5 s (k5)\n{}",
        bed.broker.log()
    );
    let log = bed.broker.log();
    let will_line = log
        .lines()
        .skip_while(|l| {
            !(l.contains("New client connected") && l.contains(&format!(" as {cid} (")))
        })
        .nth(1)
        .unwrap_or_default();
    assert!(
        will_line.contains("Will message specified") && will_line.contains("(r1, q1)"),
        "standard mode sets a retained QoS 1 Will: {will_line:?}\n{log}"
    );
    assert!(
        log.contains(&format!("\t{}\n", bed.config().presence_topic())),
        "the Will goes to the presence topic\n{log}"
    );
    assert_eq!(bed.call_ok("sys.ping", json!({}))["pong"], json!(true));
}
