//! What the page's JSON endpoints are asked (`?q=&page=&per_page=`) and the
//! one page of pools or IPs they answer with. Pure: no I/O.
//!
//! Paging is done here, server side, so that the browser of a cluster with
//! thousands of pools gets one page of them, not all.

use std::fmt;

use serde::Serialize;

use crate::output::PoolView;

/// Rows a page shows unless the query says otherwise: a laptop screen's
/// worth of pools with their ToRs.
pub const DEFAULT_PER_PAGE: usize = 50;
/// The most a query may ask for; more is refused rather than cut silently.
pub const MAX_PER_PAGE: usize = 1000;

/// `q`, `page` and `per_page` of a query string. Other keys (the page's own
/// `pool`, `ippage`) are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageQuery {
    /// Lowercased and trimmed: names, namespaces and apps are lowercase.
    pub q: String,
    /// 1-based.
    pub page: usize,
    pub per_page: usize,
}

impl Default for PageQuery {
    fn default() -> Self {
        Self {
            q: String::new(),
            page: 1,
            per_page: DEFAULT_PER_PAGE,
        }
    }
}

/// A query parameter that cannot be used: which, the value, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadQuery {
    pub param: &'static str,
    pub value: String,
    pub reason: String,
}

impl fmt::Display for BadQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid query parameter {}={:?}: {}",
            self.param, self.value, self.reason
        )
    }
}

impl std::error::Error for BadQuery {}

/// Parses a query string (the part after `?`; empty for none);
/// `per_page` when it does not say.
pub fn parse(query: &str, per_page: usize) -> Result<PageQuery, BadQuery> {
    let mut out = PageQuery {
        per_page,
        ..PageQuery::default()
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |param: &'static str, reason: &str| BadQuery {
            param,
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let value = decode(value).map_err(|reason| BadQuery {
            param: "query",
            value: pair.to_string(),
            reason,
        })?;
        match key {
            "q" => out.q = value.trim().to_lowercase(),
            "page" if value.is_empty() => {}
            "page" => {
                out.page = value
                    .parse()
                    .ok()
                    .filter(|&p| p >= 1)
                    .ok_or_else(|| bad("page", "a page number, 1 or more, e.g. page=2"))?;
            }
            "per_page" if value.is_empty() => {}
            "per_page" => {
                out.per_page = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PER_PAGE).contains(n))
                    .ok_or_else(|| {
                        bad(
                            "per_page",
                            &format!("rows per page, 1 to {MAX_PER_PAGE}, e.g. per_page=50"),
                        )
                    })?;
            }
            _ => {}
        }
    }
    Ok(out)
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a
/// byte; the bytes must be UTF-8.
fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("a % not followed by two hex digits: encode it as %25")?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once percent-decoded".to_string())
}

/// Does the pool match search text `q` (already lowercased)? A substring of
/// its name, namespace or app; the empty text matches every pool.
pub fn matches(pool: &PoolView, q: &str) -> bool {
    q.is_empty()
        || [&pool.name, &pool.namespace, &pool.app]
            .iter()
            .any(|f| f.contains(q))
}

/// Where a page sits among the matching items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PageInfo {
    /// The page shown: the one asked for, or the last one when it asked for
    /// a page past the end (a list that shrank under a bookmarked URL).
    pub page: usize,
    pub per_page: usize,
    /// At least 1, also when nothing matches.
    pub pages: usize,
    /// Items that match, over all pages.
    pub matching: usize,
}

/// Page `page` of `items`, `per_page` a page.
pub fn page_of<T>(items: Vec<T>, page: usize, per_page: usize) -> (PageInfo, Vec<T>) {
    let per_page = per_page.max(1);
    let matching = items.len();
    let pages = matching.div_ceil(per_page).max(1);
    let page = page.clamp(1, pages);
    let shown = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let info = PageInfo {
        page,
        per_page,
        pages,
        matching,
    };
    (info, shown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::CountsView;

    fn pool(name: &str, namespace: &str, app: &str) -> PoolView {
        PoolView {
            name: name.into(),
            namespace: namespace.into(),
            app: app.into(),
            size: 1,
            policy: "auto".into(),
            family: "ipv4".into(),
            allow_namespaces: Vec::new(),
            tors: Vec::new(),
            totals: CountsView::default(),
        }
    }

    #[test]
    fn parses_search_and_paging() {
        assert_eq!(parse("", DEFAULT_PER_PAGE).unwrap(), PageQuery::default());
        assert_eq!(
            parse("q=+Web%2D1+&page=3&per_page=20&pool=web&ippage=2", 7).unwrap(),
            PageQuery {
                q: "web-1".into(),
                page: 3,
                per_page: 20
            }
        );
        // An empty number is the default, as a form with an empty field sends.
        assert_eq!(parse("q=&page=&per_page=", 7).unwrap().per_page, 7);
        assert_eq!(parse("q=caf%C3%A9", 1).unwrap().q, "café");
    }

    #[test]
    fn refuses_bad_numbers_naming_the_parameter() {
        for (query, param) in [
            ("page=0", "page"),
            ("page=-1", "page"),
            ("page=two", "page"),
            ("per_page=0", "per_page"),
            ("per_page=1001", "per_page"),
            ("q=%zz", "query"),
            ("q=%e9", "query"),
        ] {
            let e = parse(query, 1).expect_err(query);
            assert_eq!(e.param, param, "{query}: {e}");
            assert!(e.to_string().contains(param), "{e}");
        }
        let e = parse("per_page=5000", 1).unwrap_err();
        assert!(e.to_string().contains("1 to 1000"), "{e}");
    }

    #[test]
    fn search_is_a_substring_of_name_namespace_or_app() {
        let p = pool("mysql-prod", "db", "mysql");
        for q in ["", "mysql", "prod", "db", "sql-p"] {
            assert!(matches(&p, q), "{q}");
        }
        for q in ["web", "prod-x", "dbx"] {
            assert!(!matches(&p, q), "{q}");
        }
    }

    #[test]
    fn pages_split_and_clamp() {
        let items: Vec<u32> = (0..105).collect();
        let (info, shown) = page_of(items.clone(), 1, 50);
        assert_eq!(
            info,
            PageInfo {
                page: 1,
                per_page: 50,
                pages: 3,
                matching: 105
            }
        );
        assert_eq!(shown, (0..50).collect::<Vec<_>>());
        let (info, shown) = page_of(items.clone(), 3, 50);
        assert_eq!((info.page, shown), (3, (100..105).collect::<Vec<_>>()));
        // Past the end: the last page.
        let (info, shown) = page_of(items, 9, 50);
        assert_eq!((info.page, shown.len()), (3, 5));
        // Nothing matches: one empty page.
        let (info, shown) = page_of(Vec::<u32>::new(), 4, 50);
        assert_eq!((info.page, info.pages, info.matching), (1, 1, 0));
        assert!(shown.is_empty());
    }
}
