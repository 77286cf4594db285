//! The listings ipamd streams (`ip list`, `pool list`, `binding list`),
//! printed as their messages arrive: neither ipamd nor ipamctl holds the
//! whole list of a big cluster.
//!
//! The output is what the whole-list renderers in `output` print, with two
//! differences a stream cannot avoid: the table's columns are as wide as the
//! header and the first message's rows (up to 500; a wider cell later pushes
//! its line out, still two spaces apart), and the order is ipamd's (pools by
//! name, each pool's IPs by address; bindings by their key, namespace/name).
//! A listing that fails part way has printed what it got: the error goes to
//! stderr, the exit code is 1, and JSON output is left without its closing
//! `]`, so no script takes it for the whole list.

use std::io::{self, Write};

use moor_proto::v1::admin_client::AdminClient;
use moor_proto::v1::{ListBindingsRequest, ListIpsRequest, ListPoolsRequest};
use serde::Serialize;
use tonic::transport::Channel;
use tonic::Code;

use crate::client::ServerError;
use crate::output::{self, BindingView, Format, IpView, PoolView, Table};

/// What to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    /// `ip list [--pool P]` ("" = every pool).
    Ips(String),
    Pools,
    /// `binding list [--pool P]`.
    Bindings(String),
}

impl Listing {
    fn command(&self) -> &'static str {
        match self {
            Listing::Ips(_) => "ip list",
            Listing::Pools => "pool list",
            Listing::Bindings(_) => "binding list",
        }
    }
}

/// Sends the listing's RPC and prints the replies to `out` as they come.
/// A closed `out` (`ipamctl ip list | head`) ends the listing quietly.
pub async fn print(
    client: &mut AdminClient<Channel>,
    listing: &Listing,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let older = |s: tonic::Status| -> ServerError {
        if s.code() == Code::Unimplemented {
            // ipamd's answer to a method it does not know.
            ServerError(tonic::Status::unimplemented(format!(
                "this ipamd is older than ipamctl: it cannot stream `{}`; use the ipamctl of ipamd's release",
                listing.command()
            )))
        } else {
            ServerError(s)
        }
    };
    let result = match listing {
        Listing::Ips(pool) => {
            let replies = client.stream_ips(ListIpsRequest { pool: pool.clone() });
            let replies = replies.await.map_err(older)?.into_inner();
            let p = Printer::new(out, format, &output::IP_HEADERS);
            drain(
                replies,
                p,
                |m| m.ips.iter().map(IpView::from).collect(),
                |v| output::ip_row(v).to_vec(),
            )
            .await?
        }
        Listing::Pools => {
            let replies = client.stream_pools(ListPoolsRequest {});
            let replies = replies.await.map_err(older)?.into_inner();
            let p = Printer::new(out, format, &output::POOL_HEADERS);
            drain(
                replies,
                p,
                |m| m.pools.iter().map(PoolView::from).collect(),
                |v| output::pool_row(v).to_vec(),
            )
            .await?
        }
        Listing::Bindings(pool) => {
            let replies = client.stream_bindings(ListBindingsRequest { pool: pool.clone() });
            let replies = replies.await.map_err(older)?.into_inner();
            let p = Printer::new(out, format, &output::BINDING_HEADERS);
            drain(
                replies,
                p,
                |m| m.bindings.iter().map(BindingView::from).collect(),
                |v| output::binding_row(v).to_vec(),
            )
            .await?
        }
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::anyhow!("writing the output: {e}")),
        Ok(()) => Ok(()),
    }
}

/// Prints every message of `replies` as it arrives (`views` turns one into
/// the items to print, `row` an item into its table cells). The outer error
/// is ipamd's, the inner one writing the output's.
async fn drain<M, V: Serialize>(
    mut replies: tonic::Streaming<M>,
    mut p: Printer<'_>,
    views: impl Fn(&M) -> Vec<V>,
    row: impl Fn(&V) -> Vec<String> + Copy,
) -> Result<io::Result<()>, ServerError> {
    while let Some(m) = replies.message().await.map_err(ServerError)? {
        if let Err(e) = p.batch(&views(&m), row) {
            return Ok(Err(e));
        }
    }
    Ok(p.finish())
}

/// Writes a list as its batches arrive: a JSON array element by element
/// (exactly what `output::json` prints for the whole list), or a table
/// aligned to its header and first batch.
pub struct Printer<'w> {
    out: &'w mut dyn Write,
    format: Format,
    headers: &'static [&'static str],
    /// Set by the first batch of a table.
    widths: Option<Vec<usize>>,
    items: usize,
}

impl<'w> Printer<'w> {
    pub fn new(out: &'w mut dyn Write, format: Format, headers: &'static [&'static str]) -> Self {
        Self {
            out,
            format,
            headers,
            widths: None,
            items: 0,
        }
    }

    /// Prints one batch; `row` gives an item's table cells.
    pub fn batch<V: Serialize>(
        &mut self,
        views: &[V],
        row: impl Fn(&V) -> Vec<String>,
    ) -> io::Result<()> {
        let mut text = String::new();
        match self.format {
            Format::Json => {
                for v in views {
                    text.push_str(if self.items == 0 { "[\n" } else { ",\n" });
                    self.items += 1;
                    // An element of a pretty-printed array: indented once.
                    // JSON strings escape newlines, so every line is the
                    // element's own.
                    let element = serde_json::to_string_pretty(v).expect("views serialize");
                    let indented: Vec<String> = element.lines().map(|l| format!("  {l}")).collect();
                    text.push_str(&indented.join("\n"));
                }
            }
            Format::Table => {
                let mut t = Table::new(self.headers);
                for v in views {
                    t.row_vec(row(v));
                }
                self.items += views.len();
                match &self.widths {
                    None => {
                        let widths = t.widths();
                        text = t.render_rows(0, &widths);
                        self.widths = Some(widths);
                    }
                    Some(widths) => text = t.render_rows(1, widths),
                }
            }
        }
        self.out.write_all(text.as_bytes())?;
        // Shown as it arrives, not when a buffer fills.
        self.out.flush()
    }

    /// Ends the list: closes the JSON array; a table with no rows is its
    /// header.
    pub fn finish(&mut self) -> io::Result<()> {
        let text = match self.format {
            Format::Json if self.items == 0 => "[]\n".to_string(),
            Format::Json => "\n]\n".to_string(),
            Format::Table if self.widths.is_none() => Table::new(self.headers).render(),
            Format::Table => String::new(),
        };
        self.out.write_all(text.as_bytes())?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moor_proto::v1::{Attachment, Ip, PodRef};

    fn ip(i: u32, container: &str) -> Ip {
        Ip {
            address: std::net::Ipv4Addr::from(0x0a01_0000 + i).to_string(),
            pool: "web".into(),
            tor: "rack-1".into(),
            state: if container.is_empty() {
                "free"
            } else {
                "in-use"
            }
            .into(),
            binding: None,
            attachment: (!container.is_empty()).then(|| Attachment {
                container_id: container.into(),
                ifname: "eth0".into(),
                node: "n1".into(),
                pod: Some(PodRef {
                    namespace: "default".into(),
                    name: format!("web-{i}"),
                    uid: String::new(),
                }),
                ..Attachment::default()
            }),
            quarantine: None,
            ..Default::default()
        }
    }

    /// Prints `ips` in batches of `n` as the stream does.
    fn streamed(ips: &[Ip], n: usize, format: Format) -> String {
        let mut out = Vec::new();
        let mut p = Printer::new(&mut out, format, &output::IP_HEADERS);
        for chunk in ips.chunks(n) {
            let views: Vec<IpView> = chunk.iter().map(IpView::from).collect();
            p.batch(&views, |v| output::ip_row(v).to_vec()).unwrap();
        }
        p.finish().unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_in_batches_is_the_whole_list() {
        let ips: Vec<Ip> = (1..=7)
            .map(|i| ip(i, if i % 2 == 0 { "abc" } else { "" }))
            .collect();
        let whole = output::ip_list(&ips, Format::Json);
        for n in [1, 3, 7] {
            assert_eq!(streamed(&ips, n, Format::Json), whole, "batches of {n}");
        }
        assert_eq!(streamed(&[], 3, Format::Json), "[]\n");
    }

    #[test]
    fn table_is_aligned_to_the_first_batch() {
        let ips: Vec<Ip> = (1..=4).map(|i| ip(i, "")).collect();
        let whole = output::ip_list(&ips, Format::Table);
        assert_eq!(streamed(&ips, 4, Format::Table), whole, "one batch");
        // A later row with a longer cell keeps its fields apart.
        let mut more = ips.clone();
        more.push(ip(300, "0123456789abcdef"));
        let out = streamed(&more, 4, Format::Table);
        assert!(out.starts_with(&whole), "{out}");
        let last = out.lines().last().unwrap();
        assert_eq!(
            last.split_whitespace().collect::<Vec<_>>(),
            [
                "10.1.1.44",
                "web",
                "rack-1",
                "in-use",
                "default/web-300",
                "n1",
                "0123456789ab"
            ]
        );
        assert_eq!(
            streamed(&[], 3, Format::Table),
            output::ip_list(&[], Format::Table),
            "an empty list is its header"
        );
    }
}
