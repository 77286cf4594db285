//! What moor's own log says it was called with: the harness's record of
//! how containerd drives the plugin (commands, container ids, CNI_NETNS).

/// One call of the moor binary, from moor's own log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoorCall {
    pub cmd: String,
    pub container_id: String,
    /// CNI_NETNS, empty when the runtime sent none.
    pub netns: String,
}

/// A `start` line of moor's log: `... cni{cmd="ADD" cid=ID ifname=eth0
/// pod=NS/NAME}: moor: start netns=Some("PATH") socket=...`.
pub(super) fn parse_moor_start(line: &str) -> Option<MoorCall> {
    let span = line.split("cni{").nth(1)?.split('}').next()?;
    let rest = line.split("}: ").nth(1)?;
    if !rest.contains(" start ") && !rest.contains(": start") {
        return None;
    }
    let field = |k: &str| {
        span.split(' ')
            .find_map(|kv| kv.strip_prefix(k))
            // `cmd` is logged with Debug quotes, `cid` without.
            .map(|v| v.trim_matches('"').to_owned())
    };
    let netns = rest
        .split("netns=Some(\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("")
        .to_string();
    Some(MoorCall {
        cmd: field("cmd=")?,
        container_id: field("cid=")?,
        netns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moor_start_lines_parse() {
        let l = r#"2026-01-01T00:00:00.000000Z DEBUG cni{cmd="ADD" cid=abc123 ifname=eth0 pod=shop/web-0}: moor: start netns=Some("/var/run/netns/cni-1") socket=/tmp/x/ipamd.sock"#;
        assert_eq!(
            parse_moor_start(l),
            Some(MoorCall {
                cmd: "ADD".into(),
                container_id: "abc123".into(),
                netns: "/var/run/netns/cni-1".into()
            })
        );
        let l = r#"2026-01-01T00:00:00.000000Z DEBUG cni{cmd=DEL cid=abc123 ifname=eth0 pod=shop/web-0}: moor: start netns=Some("") socket=/tmp/x"#;
        assert_eq!(parse_moor_start(l).unwrap().netns, "");
        let l = r#"2026-01-01T00:00:00.000000Z  INFO cni{cmd=ADD cid=abc123 ifname=eth0 pod=shop/web-0}: moor::commands: attached address=10.0.0.5/24"#;
        assert_eq!(parse_moor_start(l), None);
    }
}
