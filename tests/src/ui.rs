//! `ipamctl ui` as its tests run it ([`UiServer`]), and reading the page's
//! DOM as Chromium serializes it ([`rows`], [`element`]): the page marks
//! each ToR, pool, node and IP row with `data-*` attributes and its counts
//! with cell classes (`<td class="total">6</td>`), so plain string search
//! finds them without an HTML parser.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use moor_testkit::process::{spawn_logged, Reaped};
use moor_testkit::TempDir;

/// `ipamctl --socket SOCKET ui --listen 127.0.0.1:0 --refresh N`, killed by
/// pid on drop.
pub struct UiServer {
    /// `http://127.0.0.1:PORT`, no slash at the end.
    pub base: String,
    _child: Reaped,
    _dir: TempDir,
}

impl UiServer {
    /// Starts it and waits (up to 10 s) for the line that says where it
    /// listens.
    pub fn start(ipamctl: &Path, socket: &Path, refresh_seconds: u32) -> UiServer {
        let dir = TempDir::new("moor-ui");
        let log = dir.join("ui.log");
        let mut cmd = Command::new(ipamctl);
        cmd.arg("--socket")
            .arg(socket)
            .args(["ui", "--listen", "127.0.0.1:0", "--refresh"])
            .arg(refresh_seconds.to_string())
            .env_remove("MOOR_SOCKET");
        let mut child = Reaped::new(spawn_logged(&mut cmd, &log).expect("start ipamctl ui"));
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(base) = listening(&text) {
                return UiServer {
                    base,
                    _child: child,
                    _dir: dir,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("ipamctl ui exited {status}:\n{text}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "ipamctl ui did not say where it listens within 10 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The page's URL with `query` (e.g. `?pool=web`, or "").
    pub fn url(&self, query: &str) -> String {
        format!("{}/{query}", self.base)
    }

    /// `GET path` (HTTP/1.1, one connection): the status and the body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let addr = self.base.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).expect("connect to ipamctl ui");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("read the answer");
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("GET {path}: not HTTP: {raw}"));
        (status, body.to_string())
    }
}

/// `http://ADDR` from the line `ipamctl ui: listening on http://ADDR/ ...`.
fn listening(log: &str) -> Option<String> {
    let rest = log.split("listening on ").nth(1)?;
    let url = rest.split_whitespace().next()?;
    Some(url.trim_end_matches('/').to_string())
}

/// An element: its attributes, and the text of each `<td class=...>` in it
/// (tags taken out, entities decoded).
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub attrs: BTreeMap<String, String>,
    pub cells: BTreeMap<String, String>,
    pub text: String,
}

impl Row {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).map(String::as_str)
    }

    /// The cell of class `class`, which must be there.
    pub fn cell(&self, class: &str) -> &str {
        self.cells
            .get(class)
            .unwrap_or_else(|| panic!("no <td class={class:?}> in {self:?}"))
    }

    /// The cell of class `class` as a number.
    pub fn num(&self, class: &str) -> u64 {
        let c = self.cell(class);
        c.trim()
            .parse()
            .unwrap_or_else(|_| panic!("<td class={class:?}> is {c:?}, not a number"))
    }
}

/// Every `<tr>` of `html`, in order.
pub fn rows(html: &str) -> Vec<Row> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find("<tr") {
        rest = &rest[i + 3..];
        if !rest.starts_with([' ', '>']) {
            continue;
        }
        let end = rest.find("</tr>").unwrap_or(rest.len());
        let (row, after) = rest.split_at(end);
        out.push(parse_element(row));
        rest = after;
    }
    out
}

/// The element with `id="ID"`: its attributes and its text.
pub fn element(html: &str, id: &str) -> Option<Row> {
    let at = html.find(&format!(" id=\"{id}\""))?;
    let open = html[..at].rfind('<')?;
    let tag: String = html[open + 1..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let body = &html[open + 1 + tag.len()..];
    let end = body.find(&format!("</{tag}>")).unwrap_or(body.len());
    Some(parse_element(&body[..end]))
}

/// `attrs>content` (the tag's name already taken off).
fn parse_element(s: &str) -> Row {
    let close = s.find('>').unwrap_or(s.len());
    let (attrs, content) = (&s[..close], s.get(close + 1..).unwrap_or(""));
    let mut cells = BTreeMap::new();
    let mut rest = content;
    while let Some(i) = rest.find("<td") {
        rest = &rest[i + 3..];
        let close = rest.find('>').unwrap_or(rest.len());
        let td = attributes(&rest[..close]);
        let end = rest.find("</td>").unwrap_or(rest.len());
        let text = text(&rest[(close + 1).min(end)..end]);
        if let Some(class) = td.get("class") {
            cells.insert(class.clone(), text);
        }
        rest = &rest[end..];
    }
    Row {
        attrs: attributes(attrs),
        cells,
        text: text(content),
    }
}

/// ` a="x" b="y" hidden` into a map (a bare attribute maps to "").
fn attributes(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let name_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let name = rest[..name_end].to_string();
        rest = &rest[name_end..];
        let value = if let Some(r) = rest.strip_prefix("=\"") {
            let end = r.find('"').unwrap_or(r.len());
            let v = decode(&r[..end]);
            rest = r.get(end + 1..).unwrap_or("");
            v
        } else {
            String::new()
        };
        if !name.is_empty() {
            out.insert(name, value);
        }
        rest = rest.trim_start();
    }
    out
}

/// Markup to its text: tags out, entities decoded.
fn text(s: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    decode(&out)
}

fn decode(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_rows_cells_and_elements() {
        let html = r#"<table><tbody><tr class="pool" data-pool="web"><td class="name"><a href="/?pool=web">web</a><div class="sub">shop / web</div></td><td class="total">6</td><td class="usage"><div class="bar"></div></td></tr><tr data-tor="r&amp;1" hidden><td class="free">2</td></tr></tbody></table><span id="pool-count" class="count" data-total="3">3</span>"#;
        let r = rows(html);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].attr("data-pool"), Some("web"));
        assert_eq!(r[0].num("total"), 6);
        assert_eq!(r[0].cell("name"), "webshop / web");
        assert_eq!(r[1].attr("data-tor"), Some("r&1"));
        assert_eq!(r[1].attr("hidden"), Some(""));
        let c = element(html, "pool-count").unwrap();
        assert_eq!(c.attr("data-total"), Some("3"));
        assert_eq!(c.text, "3");
        assert!(element(html, "nothing").is_none());
        assert_eq!(
            listening("x\nipamctl ui: listening on http://127.0.0.1:4567/ (ipamd at /s)\n"),
            Some("http://127.0.0.1:4567".into())
        );
    }
}
