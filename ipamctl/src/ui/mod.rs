//! `ipamctl ui`: a read-only web page of what ipamd holds, for an operator's
//! browser: per ToR and per pool the total/free/bound/in-use counts as bars,
//! a pool's IPs with their pod, node and state, the nodes and whether they
//! are alive. It reloads its data every `--refresh` seconds by itself.
//!
//! - [`query`]: the search and paging a request asks for, and the page of
//!   items it gets (pure).
//! - [`views`]: the JSON shapes, from ipamd's replies (pure).
//! - [`fetch`]: ipamd's Admin API over its unix socket, as every command
//!   of ipamctl reads it: nothing else is a source.
//! - [`server`]: HTTP (hyper 1), GET and HEAD only.
//! - `page.html`, `page.css`, `page.js`: the page, built into the binary
//!   (no CDN, no fonts, no framework: it works on a host without internet).
//!
//! The page's state (search text, page, selected pool) is in its URL
//! (`/?q=&page=&pool=&ippage=`), so a link shows the same view to whoever
//! opens it.

mod fetch;
mod query;
mod server;
mod views;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::validate::InputError;

/// The page's refresh when `--refresh` is not given.
pub const DEFAULT_REFRESH_SECONDS: u32 = 5;
/// Longer than this is no longer a live view.
const MAX_REFRESH_SECONDS: u32 = 3600;

/// `ipamctl ui`'s flags, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub refresh_seconds: u32,
    pub allow_remote: bool,
}

/// Checks `--listen` and `--refresh`. A listen address other than loopback
/// needs `--allow-remote`: the page has no login and shows every pod's IP,
/// node and name to whoever connects.
pub fn config(listen: &str, refresh: &str, allow_remote: bool) -> Result<Config, InputError> {
    let bad = |flag: &str, value: &str, message: String| InputError {
        flag: flag.to_string(),
        value: value.to_string(),
        message,
    };
    let addr: SocketAddr = listen.parse().map_err(|_| {
        bad(
            "--listen",
            listen,
            "an IP address and port, e.g. 127.0.0.1:9472 ([::1]:9472 for IPv6; \
             port 0 takes any free port)"
                .into(),
        )
    })?;
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(bad(
            "--listen",
            listen,
            "not a loopback address: the page has no login and shows every pod's IP, \
             node and name to whoever connects; listen on 127.0.0.1 (and reach it \
             with ssh -L), or pass --allow-remote to serve it to the network"
                .into(),
        ));
    }
    let refresh_seconds = refresh
        .parse()
        .ok()
        .filter(|s| (1..=MAX_REFRESH_SECONDS).contains(s))
        .ok_or_else(|| {
            bad(
                "--refresh",
                refresh,
                format!(
                    "seconds between the page's reloads of its data, 1 to \
                     {MAX_REFRESH_SECONDS}, e.g. --refresh {DEFAULT_REFRESH_SECONDS}"
                ),
            )
        })?;
    Ok(Config {
        listen: addr,
        refresh_seconds,
        allow_remote,
    })
}

const PAGE_HTML: &str = include_str!("page.html");
const PAGE_CSS: &str = include_str!("page.css");
const PAGE_JS: &str = include_str!("page.js");

/// The page: one HTML document with its style and script inline.
pub fn page(refresh_seconds: u32) -> String {
    PAGE_HTML
        .replace("/*PAGE_CSS*/", PAGE_CSS)
        .replace("/*PAGE_JS*/", PAGE_JS)
        .replace("{{REFRESH}}", &refresh_seconds.to_string())
}

/// Serves the page until the process is stopped. Says where on stderr, in
/// one line scripts can read: `ipamctl ui: listening on http://ADDR/ ...`
/// (with `--listen ...:0`, the port chosen).
pub fn run(socket: &Path, config: &Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| {
                format!(
                    "--listen {}: cannot listen there (pick another port, e.g. --listen 127.0.0.1:0)",
                    config.listen
                )
            })?;
        let addr = listener.local_addr()?;
        eprintln!(
            "ipamctl ui: listening on http://{addr}/ (ipamd at {}, the page reloads its data every {} s)",
            socket.display(),
            config.refresh_seconds
        );
        let state = Arc::new(server::State {
            ipamd: fetch::Ipamd {
                socket: socket.to_path_buf(),
            },
            page: page(config.refresh_seconds),
            allow_remote: config.allow_remote,
        });
        server::serve(listener, state).await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_must_be_loopback_unless_allowed() {
        let c = config("127.0.0.1:0", "1", false).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:0");
        assert_eq!(c.refresh_seconds, 1);
        assert!(config("[::1]:9472", "5", false).is_ok());
        for addr in ["0.0.0.0:9472", "192.0.2.7:9472", "[::]:9472"] {
            let e = config(addr, "5", false).expect_err(addr);
            assert_eq!(e.flag, "--listen");
            assert!(e.to_string().contains("--allow-remote"), "{e}");
            assert!(
                config(addr, "5", true).is_ok(),
                "{addr} with --allow-remote"
            );
        }
    }

    #[test]
    fn bad_flags_are_named() {
        for (listen, refresh, flag) in [
            ("localhost:9472", "5", "--listen"),
            ("127.0.0.1", "5", "--listen"),
            ("127.0.0.1:99999", "5", "--listen"),
            ("127.0.0.1:0", "0", "--refresh"),
            ("127.0.0.1:0", "3601", "--refresh"),
            ("127.0.0.1:0", "1.5", "--refresh"),
        ] {
            let e = config(listen, refresh, false).expect_err(listen);
            assert_eq!(e.flag, flag, "{e}");
        }
    }

    #[test]
    fn the_page_is_self_contained() {
        let p = page(7);
        assert!(
            p.contains("data-refresh=\"7\""),
            "the interval is filled in"
        );
        assert!(
            !p.contains("{{") && !p.contains("/*PAGE_"),
            "every slot filled"
        );
        assert!(p.contains("<style>") && p.contains("<script>"));
        // Nothing fetched from elsewhere: no external script, style, font
        // or image.
        for outside in ["http://", "https://", "//cdn", "src=", "@import", "url("] {
            assert!(!p.contains(outside), "the page refers to {outside:?}");
        }
    }
}
