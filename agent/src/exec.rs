//! Running external programs: an argument vector (never a shell), a timeout that kills the
//! program, optional stdin (the way secrets travel wherever the program can take them there:
//! Samba passwords, targetcli's CHAP commands; tgtadm has no such way, see docs/security.md),
//! and stdout/stderr captured up to a bound so a runaway program cannot exhaust memory.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Captured output beyond this many bytes per stream is discarded (and said so).
pub const MAX_CAPTURE: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Program {
    pub path: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub timeout: Duration,
    /// Arguments (by position) shown as `<hidden>` in the command line of logs and errors: a
    /// secret that must travel in argv (tgtadm's CHAP password) is never copied into one.
    pub hide: Vec<usize>,
}

impl Program {
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            path: path.into(),
            args: Vec::new(),
            env: Vec::new(),
            timeout,
            hide: Vec::new(),
        }
    }
    /// Shows the argument at position `i` (counted from 0) as `<hidden>` in logs and errors.
    pub fn hide_arg(mut self, i: usize) -> Self {
        self.hide.push(i);
        self
    }
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    /// The command line for logs and error messages (arguments are already validated values;
    /// a secret travels on stdin, or, where a program has no such way, in a hidden argument).
    pub fn display(&self) -> String {
        let mut s = self.path.display().to_string();
        for (i, a) in self.args.iter().enumerate() {
            s.push(' ');
            if self.hide.contains(&i) {
                s.push_str("<hidden>");
            } else {
                s.push_str(&a.to_string_lossy());
            }
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// What a failed run said: its stderr, or its stdout when stderr is empty (some tools
    /// report errors there), trimmed.
    pub fn said(&self) -> &str {
        if self.stderr.trim().is_empty() {
            self.stdout.trim()
        } else {
            self.stderr.trim()
        }
    }
}

#[derive(Debug, Error)]
pub enum ExecError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} did not finish within {timeout:?} and was killed")]
    Timeout { program: String, timeout: Duration },
    #[error("{program} failed: {source}")]
    Io {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} was killed by a signal")]
    Signaled { program: String },
}

/// What went wrong, without the command line: callers whose argv carries a secret (CHAP on
/// tgtadm and targetcli) rebuild their message from this and their own redacted command.
#[derive(Debug)]
pub enum Failure {
    Timeout(Duration),
    Exec(String),
}

impl ExecError {
    pub fn without_argv(self) -> Failure {
        match self {
            ExecError::Timeout { timeout, .. } => Failure::Timeout(timeout),
            ExecError::Spawn { source, .. } | ExecError::Io { source, .. } => {
                Failure::Exec(source.to_string())
            }
            ExecError::Signaled { .. } => Failure::Exec("killed by a signal".into()),
        }
    }
}

/// Why running a program did not give the result asked for: the one error every backend
/// returns for its programs, mapped to an error code in one place ([`ToolError::to_rpc`]).
///
/// `program` is the command line for people. Where argv carries a secret (tgtadm has no other
/// way to take a CHAP secret), the caller builds the error with [`ToolError::redacted`] so the
/// secret never reaches a reply or a log.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ToolError {
    /// The program, or the daemon it talks to, is not there: retryable once it is back.
    #[error("{program}: {detail}")]
    Unavailable { program: String, detail: String },
    /// Killed after its timeout: retryable.
    #[error("{program} did not finish within {timeout:?} and was killed")]
    Timeout { program: String, timeout: Duration },
    /// It ran and refused or failed.
    #[error("{program} failed (exit status {status}): {stderr}")]
    Failed {
        program: String,
        status: i32,
        stderr: String,
    },
    /// It could not be started or waited for (permissions, I/O, killed by a signal).
    #[error("{program}: {detail}")]
    Spawn { program: String, detail: String },
    /// It ran without an error, yet what it left is not what was asked for: the read-back
    /// differs, the daemon listed errors in its reply, or a file it reads could not be
    /// written. The message says which.
    #[error("{0}")]
    Unexpected(String),
}

impl ToolError {
    /// The error code a reply carries for it (the only place this mapping is written).
    pub fn code(&self) -> csg_protocol::ErrorCode {
        use csg_protocol::ErrorCode;
        match self {
            ToolError::Unavailable { .. } => ErrorCode::Unavailable,
            ToolError::Timeout { .. } => ErrorCode::Timeout,
            ToolError::Failed { .. } | ToolError::Spawn { .. } | ToolError::Unexpected(_) => {
                ErrorCode::BackendError
            }
        }
    }

    pub fn to_rpc(&self) -> csg_protocol::RpcError {
        csg_protocol::RpcError::new(self.code(), self.to_string())
    }

    /// The same error with every occurrence of each secret replaced by `<redacted>`, in the
    /// command line and in whatever the program printed.
    pub fn redacted(self, secrets: &[&str]) -> Self {
        let r = |s: String| redact(s, secrets);
        match self {
            ToolError::Unavailable { program, detail } => ToolError::Unavailable {
                program: r(program),
                detail: r(detail),
            },
            ToolError::Timeout { program, timeout } => ToolError::Timeout {
                program: r(program),
                timeout,
            },
            ToolError::Failed {
                program,
                status,
                stderr,
            } => ToolError::Failed {
                program: r(program),
                status,
                stderr: r(stderr),
            },
            ToolError::Spawn { program, detail } => ToolError::Spawn {
                program: r(program),
                detail: r(detail),
            },
            ToolError::Unexpected(m) => ToolError::Unexpected(r(m)),
        }
    }
}

impl From<ExecError> for ToolError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::Spawn { program, source }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                ToolError::Unavailable {
                    program,
                    detail: format!("not installed ({source})"),
                }
            }
            ExecError::Spawn { program, source } | ExecError::Io { program, source } => {
                ToolError::Spawn {
                    program,
                    detail: source.to_string(),
                }
            }
            ExecError::Timeout { program, timeout } => ToolError::Timeout { program, timeout },
            ExecError::Signaled { program } => ToolError::Spawn {
                program,
                detail: "killed by a signal".into(),
            },
        }
    }
}

/// `s` with each non-empty secret replaced by `<redacted>`.
pub fn redact(mut s: String, secrets: &[&str]) -> String {
    for secret in secrets.iter().filter(|x| !x.is_empty()) {
        if s.contains(secret) {
            s = s.replace(secret, "<redacted>");
        }
    }
    s
}

/// A failed change whose undo reported an error while the backend could not be read to tell
/// whether the previous state is in place anyway (the daemon or program is unreachable): saying
/// "failed too" would be a guess, and often a wrong one, since a daemon that could not be
/// reached to undo usually could not be reached to apply either.
pub fn rolled_back_unconfirmed(
    err: csg_protocol::RpcError,
    undo: &csg_protocol::RpcError,
) -> csg_protocol::RpcError {
    csg_protocol::RpcError {
        message: format!(
            "{}; whether the previous state is back could not be checked ({}); the desired \
             state is the previous one again, and the next reconcile (or sys.reconcile) \
             re-applies it",
            err.message, undo.message
        ),
        ..err
    }
    .capped()
}

/// A failed change, with how restoring the previous state went appended: the one wording of
/// "rolled back" every family uses.
pub fn rolled_back(
    err: csg_protocol::RpcError,
    restore: Result<(), csg_protocol::RpcError>,
) -> csg_protocol::RpcError {
    let suffix = match restore {
        Ok(()) => "; the previous state was restored".to_string(),
        Err(r) => format!("; restoring the previous state failed too: {}", r.message),
    };
    csg_protocol::RpcError {
        message: err.message + &suffix,
        ..err
    }
    .capped()
}

/// Runs the program and treats a non-zero exit as [`ToolError::Failed`] (with its stderr, or
/// its stdout when stderr is empty).
pub async fn run_ok(p: &Program, stdin: Option<&[u8]>) -> Result<Output, ToolError> {
    let out = run(p, stdin).await?;
    if out.status == 0 {
        return Ok(out);
    }
    Err(ToolError::Failed {
        program: p.display(),
        status: out.status,
        stderr: out.said().to_string(),
    })
}

async fn read_bounded<R: AsyncRead + Unpin>(mut r: R) -> std::io::Result<String> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    let mut dropped = 0usize;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let room = MAX_CAPTURE.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        dropped += n.saturating_sub(room);
    }
    let mut s = String::from_utf8_lossy(&kept).into_owned();
    if dropped > 0 {
        s.push_str(&format!("… [{dropped} more bytes not kept]"));
    }
    Ok(s)
}

/// Runs the program to completion. A non-zero exit is not an error here: callers decide.
pub async fn run(p: &Program, stdin: Option<&[u8]>) -> Result<Output, ExecError> {
    let program = p.display();
    let mut cmd = Command::new(&p.path);
    cmd.args(&p.args)
        .envs(p.env.iter().map(|(k, v)| (k, v)))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
        program: program.clone(),
        source,
    })?;
    let io_err = |source| ExecError::Io {
        program: program.clone(),
        source,
    };
    let mut child_in = child.stdin.take();
    let out = child.stdout.take().expect("stdout is piped");
    let err = child.stderr.take().expect("stderr is piped");
    let work = async {
        let feed = async {
            if let (Some(mut w), Some(data)) = (child_in.take(), stdin) {
                // A program that exits without reading its stdin is not our error.
                let _ = w.write_all(data).await;
                let _ = w.shutdown().await;
            }
            Ok::<_, std::io::Error>(())
        };
        let (_, stdout, stderr, status) =
            tokio::try_join!(feed, read_bounded(out), read_bounded(err), child.wait())?;
        Ok::<_, std::io::Error>((stdout, stderr, status))
    };
    match tokio::time::timeout(p.timeout, work).await {
        Err(_) => Err(ExecError::Timeout {
            program,
            timeout: p.timeout,
        }),
        Ok(Err(e)) => Err(io_err(e)),
        Ok(Ok((stdout, stderr, status))) => match status.code() {
            Some(code) => Ok(Output {
                status: code,
                stdout,
                stderr,
            }),
            None => Err(ExecError::Signaled { program }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Program {
        // Tests only: /bin/sh is the program under test here, never a way to run agent commands.
        Program::new("/bin/sh", Duration::from_secs(5)).args(["-c", script])
    }

    #[tokio::test]
    async fn captures_status_and_streams() {
        let o = run(&sh("echo out; echo err >&2; exit 3"), None)
            .await
            .unwrap();
        assert_eq!(
            (o.status, o.stdout.as_str(), o.stderr.as_str()),
            (3, "out\n", "err\n")
        );
    }

    #[tokio::test]
    async fn arguments_are_not_interpreted_by_a_shell() {
        let o = run(
            &Program::new("/bin/echo", Duration::from_secs(5)).arg("$(id); rm -rf /"),
            None,
        )
        .await
        .unwrap();
        assert_eq!(o.stdout, "$(id); rm -rf /\n");
    }

    #[tokio::test]
    async fn stdin_is_fed() {
        let o = run(
            &Program::new("/bin/cat", Duration::from_secs(5)),
            Some(b"secret\n"),
        )
        .await
        .unwrap();
        assert_eq!(o.stdout, "secret\n");
    }

    #[tokio::test]
    async fn timeout_kills() {
        let mut p = sh("sleep 30");
        p.timeout = Duration::from_millis(200);
        let t = std::time::Instant::now();
        assert!(matches!(
            run(&p, None).await,
            Err(ExecError::Timeout { .. })
        ));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn output_is_bounded() {
        let o = run(&sh("head -c 1000000 /dev/zero | tr '\\0' x >&2"), None)
            .await
            .unwrap();
        assert!(o.stderr.len() < MAX_CAPTURE + 100);
        assert!(o.stderr.ends_with("more bytes not kept]"));
    }

    #[tokio::test]
    async fn tool_errors_map_to_codes_and_redact_secrets() {
        use csg_protocol::ErrorCode;
        let missing = Program::new("/nonexistent/prog", Duration::from_secs(1));
        let e = run_ok(&missing, None).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unavailable);
        let e = run_ok(&sh("echo 'bad s3cret!' >&2; exit 2"), None)
            .await
            .unwrap_err()
            .redacted(&["s3cret!"]);
        assert_eq!(e.code(), ErrorCode::BackendError);
        let text = e.to_string();
        assert!(
            !text.contains("s3cret!") && text.contains("<redacted>"),
            "{text}"
        );
        let mut slow = sh("sleep 30");
        slow.timeout = Duration::from_millis(100);
        assert_eq!(
            run_ok(&slow, None).await.unwrap_err().code(),
            ErrorCode::Timeout
        );
    }

    #[tokio::test]
    async fn a_hidden_argument_never_shows_in_the_command_line() {
        let p = Program::new("/bin/sh", Duration::from_secs(5))
            .args(["-c", "exit 3", "sh", "s3cret!"])
            .hide_arg(3);
        assert_eq!(p.display(), "/bin/sh -c exit 3 sh <hidden>");
        let e = run_ok(&p, None).await.unwrap_err().to_string();
        assert!(!e.contains("s3cret!") && e.contains("<hidden>"), "{e}");
    }

    #[test]
    fn rolled_back_says_how_the_restore_went() {
        let e = csg_protocol::RpcError::new(csg_protocol::ErrorCode::BackendError, "x failed");
        assert_eq!(
            rolled_back(e.clone(), Ok(())).message,
            "x failed; the previous state was restored"
        );
        let r = csg_protocol::RpcError::internal("y");
        assert_eq!(
            rolled_back(e, Err(r)).message,
            "x failed; restoring the previous state failed too: y"
        );
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let p = Program::new("/nonexistent/prog", Duration::from_secs(1));
        assert!(matches!(run(&p, None).await, Err(ExecError::Spawn { .. })));
    }
}
