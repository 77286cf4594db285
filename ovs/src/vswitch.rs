//! The typed operations on the `Open_vSwitch` schema: bridges and ports.
//!
//! Every write is one RFC 7047 transaction, atomic on the server. It starts
//! with `wait` operations (timeout 0) that assert what we assumed — the bridge
//! exists, the port name is free — so a write racing another writer aborts
//! with nothing changed instead of corrupting `Bridge.ports`, and re-sending
//! a transaction whose reply was lost cannot apply it twice. `Bridge.ports`
//! and `Open_vSwitch.bridges` are only ever changed with `mutate`
//! insert/delete, never rewritten whole. Each write bumps `next_cfg` in the
//! same transaction, which ovs-vswitchd copies to `cur_cfg` once applied.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use crate::client::{Call, Ovsdb, Txn};
use crate::datum::{self, DatumError, Row};
use crate::error::{Error, ErrorKind};

/// A port to add: one Port row with one Interface row of the same name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSpec {
    pub name: String,
    /// The Interface `type`: `None` (or `"system"`) for an existing kernel
    /// device such as a pod's host veth end, `"internal"` for a device OVS
    /// creates, etc.
    pub kind: Option<String>,
    /// VLAN of an access port.
    pub tag: Option<u16>,
    /// VLANs of a trunk port; empty for an access port.
    pub trunks: Vec<u16>,
    pub external_ids: BTreeMap<String, String>,
}

impl PortSpec {
    pub fn new(name: impl Into<String>) -> Self {
        PortSpec {
            name: name.into(),
            ..Default::default()
        }
    }

    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    pub fn tag(mut self, vlan: u16) -> Self {
        self.tag = Some(vlan);
        self
    }

    pub fn trunks(mut self, vlans: impl IntoIterator<Item = u16>) -> Self {
        self.trunks = vlans.into_iter().collect();
        self
    }

    pub fn external_id(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.external_ids.insert(key.into(), value.into());
        self
    }

    fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("empty port name".into());
        }
        if self.kind.as_deref() == Some("") {
            return Err("empty interface type (leave it unset for a system device)".into());
        }
        for vlan in self.tag.iter().chain(&self.trunks) {
            if *vlan > MAX_VLAN {
                return Err(format!("VLAN {vlan} is not in 0..={MAX_VLAN}"));
            }
        }
        Ok(())
    }

    fn interface_type(&self) -> &str {
        normalize_type(self.kind.as_deref().unwrap_or(""))
    }

    fn sorted_trunks(&self) -> Vec<u16> {
        let mut t = self.trunks.clone();
        t.sort_unstable();
        t.dedup();
        t
    }
}

/// A port as the database has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    /// The bridge holding the port.
    pub bridge: String,
    /// The type of its (first) interface; `"system"` for a kernel device.
    pub kind: String,
    pub tag: Option<u16>,
    pub trunks: Vec<u16>,
    pub external_ids: BTreeMap<String, String>,
    /// The OpenFlow port number ovs-vswitchd assigned: `None` until it has
    /// applied the port, `Some(-1)` if it could not open the device.
    pub ofport: Option<i64>,
    /// Why ovs-vswitchd could not use the interface, if it could not.
    pub error: Option<String>,
}

/// OVS treats the empty type and `"system"` alike.
fn normalize_type(t: &str) -> &str {
    if t.is_empty() {
        "system"
    } else {
        t
    }
}

impl Ovsdb {
    /// Makes sure bridge `name` exists, with its internal port, creating both
    /// in one transaction if not. An existing bridge with another
    /// `datapath_type` is a `Conflict`: changing it under live ports would cut
    /// them off.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        datapath_type: Option<&str>,
    ) -> Result<(), Error> {
        let call = self.call("ensure_bridge", name.to_string());
        if name.is_empty() {
            return Err(call.error(ErrorKind::Invalid("empty bridge name".into())));
        }
        let mut bridge = json!({"name": name, "ports": datum::set([datum::named_uuid("port")])});
        if let Some(dt) = datapath_type {
            bridge["datapath_type"] = json!(dt);
        }
        let mut ops = vec![
            // Without the root row the new bridge would be garbage-collected.
            json!({"op": "wait", "table": "Open_vSwitch", "where": [], "columns": [],
                   "until": "!=", "rows": [], "timeout": 0}),
            wait_absent("Bridge", name),
            insert(
                "Interface",
                json!({"name": name, "type": "internal"}),
                "iface",
            ),
            insert(
                "Port",
                json!({"name": name, "interfaces": datum::set([datum::named_uuid("iface")])}),
                "port",
            ),
            insert("Bridge", bridge, "bridge"),
            json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
                   "mutations": [["bridges", "insert", datum::set([datum::named_uuid("bridge")])]]}),
        ];
        ops.extend(bump_next_cfg());
        loop {
            match call.transact(ops.clone()).await? {
                Txn::Committed(results) => return self.applied(&call, &results).await,
                Txn::Aborted { index: 0, .. } => return Err(call.error(ErrorKind::NotInitialized)),
                Txn::Aborted { index: 1, .. } => {
                    let read = call
                        .transact(vec![
                            select("Bridge", json!([["name", "==", name]]), &["datapath_type"]),
                            select_next_cfg(),
                        ])
                        .await?;
                    let results = committed(&call, read)?;
                    let Some(row) = rows(&call, &results[0])?.first() else {
                        continue; // deleted meanwhile: create it
                    };
                    let have = as_object(row)
                        .and_then(|r| r.str("datapath_type"))
                        .map_err(|e| protocol(&call, e))?;
                    match datapath_type {
                        Some(want) if want != have => {
                            return Err(call.error(ErrorKind::Conflict {
                                what: format!("bridge {name}"),
                                differs: format!("datapath_type {have:?}, wanted {want:?}"),
                            }))
                        }
                        _ => return self.observed(&call, next_cfg(&call, &results[1])?).await,
                    }
                }
                Txn::Aborted { error, details, .. } => {
                    return Err(call.error(ErrorKind::Ovsdb { error, details }))
                }
            }
        }
    }

    /// Adds `port` to `bridge` in one transaction: its Interface, its Port
    /// (`tag`, `trunks`, `external_ids`), a `mutate` inserting it into
    /// `Bridge.ports`, and a `next_cfg` bump. If a port of that name exists
    /// already this succeeds only if it is identical (same bridge and
    /// settings); otherwise it is a `Conflict` and nothing changes.
    pub async fn add_port(&self, bridge: &str, port: &PortSpec) -> Result<(), Error> {
        let call = self.call("add_port", format!("{bridge}/{}", port.name));
        port.validate()
            .map_err(|e| call.error(ErrorKind::Invalid(e)))?;
        let mut iface = json!({"name": port.name});
        if port.interface_type() != "system" {
            iface["type"] = json!(port.interface_type());
        }
        let mut row = json!({
            "name": port.name,
            "interfaces": datum::set([datum::named_uuid("iface")]),
            "trunks": datum::set(port.sorted_trunks().into_iter().map(|t| json!(t))),
            "external_ids": datum::map(&port.external_ids),
        });
        if let Some(tag) = port.tag {
            row["tag"] = json!(tag);
        }
        let mut ops = vec![
            json!({"op": "wait", "table": "Bridge", "where": [["name", "==", bridge]],
                   "columns": ["name"], "until": "==", "rows": [{"name": bridge}], "timeout": 0}),
            wait_absent("Port", &port.name),
            wait_absent("Interface", &port.name),
            insert("Interface", iface, "iface"),
            insert("Port", row, "port"),
            json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", bridge]],
                   "mutations": [["ports", "insert", datum::set([datum::named_uuid("port")])]]}),
        ];
        ops.extend(bump_next_cfg());
        loop {
            match call.transact(ops.clone()).await? {
                Txn::Committed(results) => return self.applied(&call, &results).await,
                Txn::Aborted { index: 0, .. } => {
                    return Err(call.error(ErrorKind::NoSuchBridge(bridge.to_string())))
                }
                Txn::Aborted { index: 1 | 2, .. } => {
                    match self.same_port(&call, bridge, port).await? {
                        Some(next_cfg) => return self.observed(&call, next_cfg).await,
                        None => continue, // deleted meanwhile: add it
                    }
                }
                Txn::Aborted { error, details, .. } => {
                    return Err(call.error(ErrorKind::Ovsdb { error, details }))
                }
            }
        }
    }

    /// After `add_port` found the name taken: `Some(next_cfg)` if the
    /// existing port is the one asked for, a `Conflict` if not, `None` if it
    /// is gone again.
    async fn same_port(
        &self,
        call: &Call<'_>,
        bridge: &str,
        want: &PortSpec,
    ) -> Result<Option<i64>, Error> {
        let name = want.name.as_str();
        let read = call
            .transact(vec![
                select("Bridge", json!([]), &["name", "ports"]),
                select("Port", json!([["name", "==", name]]), PORT_COLUMNS),
                select("Interface", json!([["name", "==", name]]), IFACE_COLUMNS),
                select_next_cfg(),
            ])
            .await?;
        let results = committed(call, read)?;
        let (bridges, ports, ifaces) = (
            rows(call, &results[0])?,
            rows(call, &results[1])?,
            rows(call, &results[2])?,
        );
        let conflict = |differs: String| {
            call.error(ErrorKind::Conflict {
                what: format!("port {name}"),
                differs,
            })
        };
        if ports.is_empty() {
            if ifaces.is_empty() {
                return Ok(None);
            }
            return Err(conflict(
                "its name is taken by an interface of another port".into(),
            ));
        }
        let sole_interface = only_interface(&ports[0], ifaces).map_err(|e| protocol(call, e))?;
        let have = join_ports(bridges, ports, ifaces).map_err(|e| protocol(call, e))?;
        let Some(have) = have.first() else {
            return Ok(None); // on no bridge: garbage, collected at the next commit
        };
        let mut differs = differences(have, bridge, want);
        if !sole_interface {
            differs.push("its interfaces are not just the one of its name".into());
        }
        if !differs.is_empty() {
            return Err(conflict(differs.join(", ")));
        }
        next_cfg(call, &results[3]).map(Some)
    }

    /// Removes port `name` from `bridge` in one transaction. `Ok(false)` if
    /// there is no such port on that bridge (DEL must not fail for a missing
    /// thing).
    pub async fn remove_port(&self, bridge: &str, name: &str) -> Result<bool, Error> {
        let call = self.call("remove_port", format!("{bridge}/{name}"));
        let read = call
            .transact(vec![select(
                "Port",
                json!([["name", "==", name]]),
                &["_uuid"],
            )])
            .await?;
        let results = committed(&call, read)?;
        let Some(port) = rows(&call, &results[0])?.first() else {
            return Ok(false);
        };
        let uuid = as_object(port)
            .and_then(|r| r.uuid("_uuid"))
            .map_err(|e| protocol(&call, e))?;
        let mut ops = vec![
            json!({"op": "wait", "table": "Bridge",
                   "where": [["name", "==", bridge], ["ports", "includes", datum::uuid(uuid)]],
                   "columns": ["name"], "until": "==", "rows": [{"name": bridge}], "timeout": 0}),
            json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", bridge]],
                   "mutations": [["ports", "delete", datum::set([datum::uuid(uuid)])]]}),
            // Its Interface row goes with it: unreferenced rows of non-root
            // tables are garbage-collected.
            json!({"op": "delete", "table": "Port", "where": [["_uuid", "==", datum::uuid(uuid)]]}),
        ];
        ops.extend(bump_next_cfg());
        match call.transact(ops).await? {
            Txn::Committed(results) => self.applied(&call, &results).await.map(|()| true),
            Txn::Aborted { index: 0, .. } => Ok(false),
            Txn::Aborted { error, details, .. } => {
                Err(call.error(ErrorKind::Ovsdb { error, details }))
            }
        }
    }

    /// The ports of `bridge`, by name.
    pub async fn ports(&self, bridge: &str) -> Result<Vec<Port>, Error> {
        let call = self.call("ports", bridge.to_string());
        let read = call
            .transact(vec![
                select(
                    "Bridge",
                    json!([["name", "==", bridge]]),
                    &["name", "ports"],
                ),
                select("Port", json!([]), PORT_COLUMNS),
                select("Interface", json!([]), IFACE_COLUMNS),
            ])
            .await?;
        let results = committed(&call, read)?;
        if rows(&call, &results[0])?.is_empty() {
            return Err(call.error(ErrorKind::NoSuchBridge(bridge.to_string())));
        }
        collect_ports(&call, &results)
    }

    /// The ports, on any bridge, whose `external_ids` has `key` = `value`.
    pub async fn ports_with(&self, key: &str, value: &str) -> Result<Vec<Port>, Error> {
        let call = self.call("ports_with", format!("{key}={value}"));
        let wanted = datum::map(&BTreeMap::from([(key.to_string(), value.to_string())]));
        let read = call
            .transact(vec![
                select("Bridge", json!([]), &["name", "ports"]),
                select(
                    "Port",
                    json!([["external_ids", "includes", wanted]]),
                    PORT_COLUMNS,
                ),
                select("Interface", json!([]), IFACE_COLUMNS),
            ])
            .await?;
        let results = committed(&call, read)?;
        collect_ports(&call, &results)
    }

    /// After a committed write: remember its `next_cfg` (the last result)
    /// and, if the options say so, wait for ovs-vswitchd to apply it.
    async fn applied(&self, call: &Call<'_>, results: &[Value]) -> Result<(), Error> {
        let next_cfg = next_cfg(call, results.last().unwrap_or(&Value::Null))?;
        call.committed(next_cfg);
        if call.wait_applied() {
            call.wait_cfg(next_cfg).await?;
        }
        Ok(())
    }

    /// After finding the state already as asked: it may be someone else's
    /// write not applied yet, so wait for the `next_cfg` we read.
    async fn observed(&self, call: &Call<'_>, next_cfg: i64) -> Result<(), Error> {
        if call.wait_applied() {
            call.wait_cfg(next_cfg).await?;
        }
        Ok(())
    }
}

const PORT_COLUMNS: &[&str] = &[
    "_uuid",
    "name",
    "interfaces",
    "tag",
    "trunks",
    "external_ids",
];
const IFACE_COLUMNS: &[&str] = &["_uuid", "name", "type", "ofport", "error"];

fn select(table: &str, where_: Value, columns: &[&str]) -> Value {
    json!({"op": "select", "table": table, "where": where_, "columns": columns})
}

fn insert(table: &str, row: Value, uuid_name: &str) -> Value {
    json!({"op": "insert", "table": table, "row": row, "uuid-name": uuid_name})
}

/// Aborts the transaction unless no row of `table` is named `name`.
fn wait_absent(table: &str, name: &str) -> Value {
    json!({"op": "wait", "table": table, "where": [["name", "==", name]],
           "columns": ["name"], "until": "==", "rows": [], "timeout": 0})
}

fn select_next_cfg() -> Value {
    select("Open_vSwitch", json!([]), &["next_cfg"])
}

/// Tells ovs-vswitchd to reconfigure; the select returns the value we set.
fn bump_next_cfg() -> [Value; 2] {
    [
        json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
               "mutations": [["next_cfg", "+=", 1]]}),
        select_next_cfg(),
    ]
}

fn protocol(call: &Call<'_>, e: DatumError) -> Error {
    call.error(ErrorKind::Protocol(e.to_string()))
}

fn committed(call: &Call<'_>, txn: Txn) -> Result<Vec<Value>, Error> {
    match txn {
        Txn::Committed(results) => Ok(results),
        Txn::Aborted { error, details, .. } => Err(call.error(ErrorKind::Ovsdb { error, details })),
    }
}

fn rows<'v>(call: &Call<'_>, result: &'v Value) -> Result<&'v Vec<Value>, Error> {
    result.get("rows").and_then(Value::as_array).ok_or_else(|| {
        call.error(ErrorKind::Protocol(format!(
            "select result without rows: {result}"
        )))
    })
}

fn next_cfg(call: &Call<'_>, select: &Value) -> Result<i64, Error> {
    match rows(call, select)?.first() {
        Some(Value::Object(row)) => Row(row).int("next_cfg").map_err(|e| protocol(call, e)),
        _ => Err(call.error(ErrorKind::NotInitialized)),
    }
}

struct Iface {
    kind: String,
    ofport: Option<i64>,
    error: Option<String>,
}

fn as_object(v: &Value) -> Result<Row<'_>, DatumError> {
    v.as_object()
        .map(Row)
        .ok_or_else(|| DatumError(format!("expected a row, got {v}")))
}

/// The largest 802.1Q VLAN id; OVS's schema bounds tags and trunks by it.
const MAX_VLAN: u16 = 4095;

/// A tag or trunk as OVS stores it: the schema bounds both to 0..=4095, so a
/// larger number means the row is not what we think it is.
fn vlan(v: i64) -> Result<u16, DatumError> {
    u16::try_from(v)
        .ok()
        .filter(|v| *v <= MAX_VLAN)
        .ok_or_else(|| DatumError(format!("VLAN {v} is not in 0..={MAX_VLAN}")))
}

/// Whether the Port row's interfaces are exactly the Interface row of its
/// name (`ifaces` is the select by that name).
fn only_interface(port: &Value, ifaces: &[Value]) -> Result<bool, DatumError> {
    let have = as_object(port)?.uuids("interfaces")?;
    let own = match ifaces.first() {
        Some(i) => Some(as_object(i)?.uuid("_uuid")?),
        None => None,
    };
    Ok(have.len() == 1 && own == Some(have[0]))
}

/// What differs between an existing port and the one asked for.
fn differences(have: &Port, bridge: &str, want: &PortSpec) -> Vec<String> {
    let mut differs = Vec::new();
    if have.bridge != bridge {
        differs.push(format!("on bridge {:?}", have.bridge));
    }
    if have.tag != want.tag {
        differs.push(format!("tag {:?}, wanted {:?}", have.tag, want.tag));
    }
    if have.trunks != want.sorted_trunks() {
        differs.push(format!(
            "trunks {:?}, wanted {:?}",
            have.trunks,
            want.sorted_trunks()
        ));
    }
    if have.external_ids != want.external_ids {
        differs.push(format!(
            "external_ids {:?}, wanted {:?}",
            have.external_ids, want.external_ids
        ));
    }
    if have.kind != want.interface_type() {
        differs.push(format!(
            "type {:?}, wanted {:?}",
            have.kind,
            want.interface_type()
        ));
    }
    differs
}

/// Joins Bridge rows (`name`, `ports`), Port rows and Interface rows into
/// the ports that are on one of those bridges, sorted by name.
fn join_ports(
    bridges: &[Value],
    ports: &[Value],
    ifaces: &[Value],
) -> Result<Vec<Port>, DatumError> {
    let mut bridge_of = HashMap::new();
    for b in bridges {
        let b = as_object(b)?;
        let name = b.str("name")?;
        for port in b.uuids("ports")? {
            bridge_of.insert(port, name);
        }
    }
    let mut by_uuid = HashMap::new();
    for i in ifaces {
        let i = as_object(i)?;
        let iface = Iface {
            kind: normalize_type(i.str("type")?).to_string(),
            ofport: i.opt_int("ofport")?,
            error: i.opt_str("error")?.map(str::to_string),
        };
        by_uuid.insert(i.uuid("_uuid")?, iface);
    }
    let mut out = Vec::new();
    for p in ports {
        let p = as_object(p)?;
        let Some(bridge) = bridge_of.get(p.uuid("_uuid")?) else {
            continue;
        };
        let iface = p.uuids("interfaces")?.first().and_then(|u| by_uuid.get(u));
        let mut trunks = p
            .ints("trunks")?
            .into_iter()
            .map(vlan)
            .collect::<Result<Vec<_>, _>>()?;
        trunks.sort_unstable();
        out.push(Port {
            name: p.str("name")?.to_string(),
            bridge: bridge.to_string(),
            kind: iface.map_or_else(String::new, |i| i.kind.clone()),
            tag: p.opt_int("tag")?.map(vlan).transpose()?,
            trunks,
            external_ids: p.string_map("external_ids")?,
            ofport: iface.and_then(|i| i.ofport),
            error: iface.and_then(|i| i.error.clone()),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `[Bridge rows, Port rows, Interface rows]` into ports.
fn collect_ports(call: &Call<'_>, results: &[Value]) -> Result<Vec<Port>, Error> {
    let (bridges, ports, ifaces) = (
        rows(call, &results[0])?,
        rows(call, &results[1])?,
        rows(call, &results[2])?,
    );
    join_ports(bridges, ports, ifaces).map_err(|e| protocol(call, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_rows_into_ports_of_the_bridges_given() {
        let bridges = [json!({"name": "br0", "ports": ["set", [["uuid", "p1"], ["uuid", "p0"]]]})];
        let ports = [
            json!({"_uuid": ["uuid", "p1"], "name": "veth1", "interfaces": ["uuid", "i1"],
                   "tag": 100, "trunks": ["set", []], "external_ids": ["map", [["owner", "moor"]]]}),
            json!({"_uuid": ["uuid", "p0"], "name": "br0", "interfaces": ["uuid", "i0"],
                   "tag": ["set", []], "trunks": ["set", [200, 100]], "external_ids": ["map", []]}),
            json!({"_uuid": ["uuid", "p9"], "name": "elsewhere", "interfaces": ["uuid", "i9"],
                   "tag": ["set", []], "trunks": ["set", []], "external_ids": ["map", []]}),
        ];
        let ifaces = [
            json!({"_uuid": ["uuid", "i1"], "name": "veth1", "type": "", "ofport": 3, "error": ["set", []]}),
            json!({"_uuid": ["uuid", "i0"], "name": "br0", "type": "internal", "ofport": ["set", []],
                   "error": "could not open network device br0 (No such device)"}),
        ];
        let got = join_ports(&bridges, &ports, &ifaces).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (
                got[0].name.as_str(),
                got[0].kind.as_str(),
                got[0].tag,
                got[0].trunks.as_slice()
            ),
            ("br0", "internal", None, &[100, 200][..])
        );
        assert_eq!((got[0].ofport, got[0].error.is_some()), (None, true));
        assert_eq!(
            (
                got[1].name.as_str(),
                got[1].bridge.as_str(),
                got[1].kind.as_str(),
                got[1].tag,
                got[1].ofport
            ),
            ("veth1", "br0", "system", Some(100), Some(3))
        );
        assert_eq!(got[1].external_ids["owner"], "moor");
    }

    #[test]
    fn differences_name_each_setting() {
        let have = Port {
            name: "v".into(),
            bridge: "br0".into(),
            kind: "system".into(),
            tag: Some(100),
            trunks: vec![],
            external_ids: BTreeMap::from([("owner".into(), "moor".into())]),
            ofport: Some(1),
            error: None,
        };
        let same = PortSpec::new("v").tag(100).external_id("owner", "moor");
        assert!(differences(&have, "br0", &same).is_empty());
        assert!(differences(&have, "br0", &same.clone().kind("system")).is_empty());
        let d = differences(&have, "br1", &PortSpec::new("v").tag(200).kind("internal"));
        let d = d.join(", ");
        for want in [
            "on bridge",
            "tag Some(100), wanted Some(200)",
            "external_ids",
            "type",
        ] {
            assert!(d.contains(want), "{d}");
        }
    }

    #[test]
    fn a_row_with_a_tag_or_trunk_past_4095_is_refused_not_truncated() {
        let bridges = [json!({"name": "br0", "ports": ["set", [["uuid", "p1"]]]})];
        let ifaces =
            [json!({"_uuid": ["uuid", "i1"], "type": "", "ofport": 1, "error": ["set", []]})];
        let port = |tag: Value, trunks: Value| {
            [
                json!({"_uuid": ["uuid", "p1"], "name": "veth1", "interfaces": ["uuid", "i1"],
                    "tag": tag, "trunks": trunks, "external_ids": ["map", []]}),
            ]
        };
        let ok = join_ports(&bridges, &port(json!(4095), json!(["set", [0]])), &ifaces).unwrap();
        assert_eq!((ok[0].tag, ok[0].trunks.clone()), (Some(4095), vec![0]));
        for (tag, trunks) in [
            (json!(4096), json!(["set", []])),
            (json!(65535), json!(["set", []])),
            (json!(["set", []]), json!(["set", [100, 4096]])),
        ] {
            let e = join_ports(&bridges, &port(tag, trunks), &ifaces).unwrap_err();
            assert!(e.to_string().contains("is not in 0..=4095"), "{e}");
        }
    }

    #[test]
    fn rejects_bad_specs() {
        assert!(PortSpec::new("").validate().is_err());
        assert!(PortSpec::new("v").tag(4096).validate().is_err());
        assert!(PortSpec::new("v").trunks([1, 5000]).validate().is_err());
        assert!(PortSpec::new("v").kind("").validate().is_err());
        assert!(PortSpec::new("v").tag(4095).trunks([0]).validate().is_ok());
    }
}
