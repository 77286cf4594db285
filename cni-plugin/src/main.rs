//! `moor`, the CNI plugin binary: reads the CNI environment and the network
//! config on stdin, asks ipamd over its unix socket, prints the CNI result or
//! error on stdout. Run once per pod event, so it starts nothing it does not
//! need: VERSION never builds a runtime, the others a current-thread one;
//! the process starts at the C `main`, without Rust's start-up (see
//! [`main`]), and the executable is not position-independent (build.rs).

#![cfg_attr(not(test), no_main)]

mod client;
mod commands;
mod config;
mod env;
mod error;
mod host_veth;
mod logging;
mod result;
mod timing;
mod version;

use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use serde_json::{json, Value};

use crate::config::NetConf;
use crate::env::{Attachment, Command};
use crate::error::{code, CniError};

/// Far above any real config with a prevResult.
const MAX_STDIN: u64 = 16 << 20;

/// The process's entry point: the C `main` itself rather than Rust's
/// `fn main`, whose start-up (`lang_start`) costs a runtime-started plugin
/// about 0.1 ms on every pod event for nothing it needs: glibc reads and
/// parses /proc/self/maps to find the main thread's stack for Rust's stack
/// guard, Rust installs a stack-overflow handler on an alternate stack,
/// polls fds 0-2 and names the thread. What of it matters is done here.
/// `std::env` works without it (glibc hands argv/environ to std).
#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    // A closed stdout is an EPIPE error to report, not a SIGPIPE death.
    // SAFETY: setting a signal's disposition has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // A panic may not unwind out of an extern "C" function: exit with the
    // code a panicking Rust `main` exits with.
    std::panic::catch_unwind(plugin_main).unwrap_or(101)
}

#[cfg_attr(test, allow(dead_code))]
fn plugin_main() -> libc::c_int {
    timing::mark(timing::Stamp::Main);
    let lookup = |k: &str| std::env::var(k).ok();
    let mut cni_version = version::LATEST.to_string();
    let outcome = run(&lookup, &mut cni_version);
    let stdout = match &outcome {
        Ok(None) => None,
        Ok(Some(result)) => Some(result.to_string()),
        Err(e) => Some(e.to_json(&cni_version)),
    };
    let written = stdout.map_or(Ok(()), |stdout| {
        let mut out = std::io::stdout().lock();
        out.write_all(stdout.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
    });
    timing::mark(timing::Stamp::Done);
    timing::report(
        &lookup("CNI_COMMAND").unwrap_or_default(),
        lookup("MOOR_TIMING").as_deref(),
    );
    match (outcome, written) {
        (Ok(_), Ok(())) => 0,
        (Ok(_), Err(e)) => {
            tracing::error!("cannot write the result to stdout: {e}");
            1
        }
        (Err(_), _) => 1,
    }
}

/// The result to print (None: success without output), or the error.
/// `cni_version` is set to the config's as soon as it is known, for the
/// error output.
fn run(
    lookup: &impl Fn(&str) -> Option<String>,
    cni_version: &mut String,
) -> Result<Option<Value>, CniError> {
    let cmd = Command::from_env(lookup)?;
    let stdin = read_stdin(cmd)?;
    if cmd == Command::Version {
        return Ok(Some(version_answer(&stdin)));
    }
    let json = config::decode(&stdin)?;
    if let Some(v) = json.get("cniVersion").and_then(Value::as_str) {
        *cni_version = v.to_string();
    }
    logging::init(
        json.get("logFile")
            .and_then(Value::as_str)
            .filter(|p| p.starts_with('/'))
            .map(Path::new),
        lookup("MOOR_LOG").as_deref(),
    );
    timing::mark(timing::Stamp::Config);
    let outcome = dispatch(cmd, &json, lookup);
    if let Err(e) = &outcome {
        tracing::warn!(
            container_id = lookup("CNI_CONTAINERID").unwrap_or_default(),
            "{} failed: {e}",
            cmd.name()
        );
    }
    outcome
}

fn dispatch(
    cmd: Command,
    json: &serde_json::Map<String, Value>,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<Option<Value>, CniError> {
    let conf = NetConf::from_json(json)?;
    let attachment = match cmd {
        Command::Add | Command::Del | Command::Check => {
            let att = Attachment::from_env(cmd, lookup)?;
            let args = env::parse_cni_args(&lookup("CNI_ARGS").unwrap_or_default())?;
            Some((att, args))
        }
        Command::Status | Command::Gc | Command::Version => None,
    };
    let _span = match &attachment {
        Some((att, args)) => tracing::info_span!(
            "cni",
            cmd = cmd.name(),
            cid = %att.container_id,
            ifname = %att.ifname,
            pod = %format_args!("{}/{}", args.pod_namespace, args.pod_name),
        ),
        None => tracing::info_span!("cni", cmd = cmd.name()),
    }
    .entered();
    tracing::debug!(netns = ?attachment.as_ref().map(|(a, _)| &a.netns), socket = %conf.socket.display(), "start");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| {
            CniError::new(
                code::IO_FAILURE,
                "moor: cannot start its runtime",
                e.to_string(),
            )
        })?;
    timing::mark(timing::Stamp::Runtime);
    rt.block_on(async {
        match (cmd, &attachment) {
            (Command::Add, Some((att, args))) => commands::add(&conf, att, args).await.map(Some),
            (Command::Del, Some((att, args))) => {
                commands::del(&conf, att, args).await.map(|()| None)
            }
            (Command::Check, Some((att, args))) => {
                commands::check(&conf, att, args).await.map(|()| None)
            }
            (Command::Status, _) => commands::status(&conf).await.map(|()| None),
            (Command::Gc, _) => commands::gc(&conf).await.map(|()| None),
            _ => unreachable!("attachment parsed for every attachment command"),
        }
    })
}

/// The runtime always passes the config; a person typing
/// `CNI_COMMAND=VERSION moor` at a terminal gets the answer without ^D.
fn read_stdin(cmd: Command) -> Result<Vec<u8>, CniError> {
    let stdin = std::io::stdin();
    if cmd == Command::Version && stdin.is_terminal() {
        return Ok(Vec::new());
    }
    let mut buf = Vec::new();
    stdin
        .lock()
        .take(MAX_STDIN + 1)
        .read_to_end(&mut buf)
        .map_err(|e| {
            CniError::new(
                code::IO_FAILURE,
                "cannot read the network config from stdin",
                e.to_string(),
            )
        })?;
    if buf.len() as u64 > MAX_STDIN {
        return Err(CniError::new(
            code::IO_FAILURE,
            "network config on stdin is too large",
            format!("more than {MAX_STDIN} bytes"),
        ));
    }
    Ok(buf)
}

/// VERSION echoes the input's cniVersion (the latest when there is none, as
/// libcni's plugins do) and never fails on odd input.
fn version_answer(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| version::LATEST.to_string());
    json!({"cniVersion": asked, "supportedVersions": version::SUPPORTED})
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn version_echoes_or_defaults() {
        let v = version_answer(br#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        assert_eq!(version_answer(b"")["cniVersion"], "1.1.0");
        assert_eq!(version_answer(b"garbage")["cniVersion"], "1.1.0");
    }

    /// Config errors come before environment errors, and both before any
    /// connection; every class reports its code.
    #[test]
    fn dispatch_input_errors() {
        let env_ok: HashMap<&str, &str> = [
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/ns"),
        ]
        .into();
        let conf = json!({"cniVersion": "1.0.0", "name": "n", "socket": "/nonexistent/m.sock"});
        // (command, config, environment over a good one, expected code)
        type Case<'a> = (Command, Value, Vec<(&'a str, &'a str)>, u32);
        let cases: Vec<Case> = vec![
            (
                Command::Add,
                json!({"cniVersion": "9.9.9", "name": "n"}),
                vec![],
                1,
            ),
            (
                Command::Add,
                json!({"cniVersion": "1.0.0", "name": "n", "socket": 1}),
                vec![],
                7,
            ),
            (Command::Add, conf.clone(), vec![("CNI_IFNAME", "")], 4),
            (Command::Add, conf.clone(), vec![("CNI_ARGS", "nokey")], 4),
            (Command::Add, conf.clone(), vec![("CNI_ARGS", "X=1")], 2),
        ];
        for (cmd, c, over, want) in cases {
            let mut vars = env_ok.clone();
            vars.extend(over);
            let lookup = |k: &str| vars.get(k).map(|v| v.to_string());
            let e = dispatch(cmd, c.as_object().unwrap(), &lookup).expect_err(&c.to_string());
            assert_eq!(e.code, want, "{c}: {e}");
        }
    }
}
