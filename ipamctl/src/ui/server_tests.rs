//! The routes and the HTTP rules, against a real listener with no ipamd
//! behind it (its socket does not exist): what must hold whatever ipamd
//! says. The pages with ipamd's data are tested end to end (tests/tests/e2e/ui.rs).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::*;

#[test]
fn routes() {
    assert_eq!(route("/"), Route::Page);
    assert_eq!(route("/index.html"), Route::Page);
    assert_eq!(route("/api/overview"), Route::Overview);
    assert_eq!(route("/api/pools"), Route::Pools);
    assert_eq!(route("/api/pools/web/ips"), Route::PoolIps("web".into()));
    for path in [
        "/api",
        "/api/pools/",
        "/api/pools//ips",
        "/api/pools/a/b/ips",
        "/api/pools/web",
        "/api/pools/web/ips/",
        "/favicon.ico",
        "/api/overview/",
    ] {
        assert_eq!(route(path), Route::NotFound, "{path}");
    }
}

#[test]
fn only_loopback_hosts_are_local() {
    for host in [
        None,
        Some("127.0.0.1:9472"),
        Some("127.0.0.1"),
        Some("127.1.2.3:80"),
        Some("localhost:9472"),
        Some("LocalHost"),
        Some("[::1]:9472"),
        Some("[::1]"),
    ] {
        assert!(host_is_local(host), "{host:?}");
    }
    for host in [
        Some("evil.example:9472"),
        Some("evil.example"),
        Some("192.0.2.1:9472"),
        Some("localhost.evil.example"),
        Some("[2001:db8::1]:80"),
        Some(""),
    ] {
        assert!(!host_is_local(host), "{host:?}");
    }
}

/// A server on a free loopback port, its ipamd socket missing; runs on its
/// own thread until the test process ends.
fn server(allow_remote: bool) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    let socket = std::env::temp_dir().join(format!(
        "ipamctl-ui-test-{}-missing/ipamd.sock",
        std::process::id()
    ));
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let state = State {
                ipamd: Ipamd { socket },
                page: crate::ui::page(3),
                allow_remote,
            };
            serve(listener, Arc::new(state)).await;
        });
    });
    rx.recv().unwrap()
}

struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 request, `Connection: close`, read to the end.
fn request(addr: SocketAddr, method: &str, path: &str, host: &str) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path, &addr.to_string())
}

#[test]
fn serves_the_page_and_refuses_everything_else() {
    let addr = server(false);
    let page = get(addr, "/");
    assert_eq!(page.status, 200);
    assert!(
        page.head.contains("content-type: text/html"),
        "{}",
        page.head
    );
    assert!(page.head.contains("cache-control: no-store"));
    assert!(page
        .head
        .contains("content-security-policy: default-src 'none'"));
    assert!(page.body.contains("data-refresh=\"3\""));

    let head = request(addr, "HEAD", "/", &addr.to_string());
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD has no body: {:?}", head.body);
    assert!(
        head.head
            .contains(&format!("content-length: {}", page.body.len())),
        "HEAD says the GET's length: {}",
        head.head
    );

    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for path in ["/", "/api/pools", "/api/pools/web/ips"] {
            let a = request(addr, method, path, &addr.to_string());
            assert_eq!(a.status, 405, "{method} {path}");
            assert!(a.head.contains("allow: get, head"), "{}", a.head);
            assert!(a.body.contains("read-only"), "{}", a.body);
        }
    }

    for path in ["/nope", "/api", "/api/pools/web", "/favicon.ico"] {
        let a = get(addr, path);
        assert_eq!(a.status, 404, "{path}");
        assert!(
            a.body.contains("/api/overview"),
            "names what exists: {}",
            a.body
        );
    }

    // Bad input: 400 naming it, before ipamd is asked.
    for (path, names) in [
        ("/api/pools?page=0", "page"),
        ("/api/pools?per_page=100000", "per_page"),
        ("/api/pools/Web_1/ips", "pool name"),
        ("/api/pools/web/ips?page=x", "page"),
    ] {
        let a = get(addr, path);
        assert_eq!(a.status, 400, "{path}: {}", a.body);
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert!(v["error"].as_str().unwrap().contains(names), "{path}: {v}");
    }
}

#[test]
fn ipamd_unreachable_is_a_502_with_its_message() {
    let addr = server(false);
    for path in ["/api/overview", "/api/pools?q=web", "/api/pools/web/ips"] {
        let a = get(addr, path);
        assert_eq!(a.status, 502, "{path}");
        assert!(a.head.contains("content-type: application/json"));
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        let message = v["error"].as_str().unwrap();
        assert!(message.contains("cannot reach ipamd"), "{message}");
        assert!(message.contains("--socket"), "says the fix: {message}");
    }
    // The page itself does not need ipamd: it shows the error itself.
    assert_eq!(get(addr, "/").status, 200);
}

#[test]
fn other_host_names_are_refused_unless_remote_is_allowed() {
    let addr = server(false);
    let a = request(addr, "GET", "/", "rebound.example:9472");
    assert_eq!(a.status, 403);
    assert!(a.body.contains("--allow-remote"), "{}", a.body);
    assert_eq!(request(addr, "GET", "/", "localhost").status, 200);

    let open = server(true);
    assert_eq!(request(open, "GET", "/", "pools.example.com").status, 200);
}
