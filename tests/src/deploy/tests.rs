//! deploy/ checked as a cluster would take it, and against ipamd's needs:
//! the node agent's essentials (issue 10), the ConfigMap against ipamd's
//! args, the ClusterRole, the Containerfile against this repository.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Volume};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::{dir, repo_root, Grant, Manifests};

fn manifests() -> Manifests {
    Manifests::load().unwrap_or_else(|e| panic!("{e}"))
}

/// The object of a kind named `name`.
fn named<
    'a,
    T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
>(
    objects: &'a [T],
    name: &str,
) -> &'a T {
    objects
        .iter()
        .find(|o| o.metadata().name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("deploy/ holds no {} {name}", T::KIND))
}

/// The one object of a kind deploy/ holds.
fn one<'a, T>(objects: &'a [T], kind: &str) -> &'a T {
    assert_eq!(objects.len(), 1, "deploy/ holds one {kind}");
    &objects[0]
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .template
        .spec
        .as_ref()
        .expect("the DaemonSet has a pod template spec")
}

fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
    pod.containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("the DaemonSet has no container {name}"))
}

fn volume<'a>(pod: &'a PodSpec, name: &str) -> &'a Volume {
    pod.volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("the DaemonSet has no volume {name}"))
}

/// The host path behind `container`'s mount at `path`, and the mount's
/// propagation.
fn host_mount(pod: &PodSpec, container: &Container, path: &str) -> (String, Option<String>) {
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == path)
        .unwrap_or_else(|| panic!("container {} does not mount {path}", container.name));
    let host = volume(pod, &mount.name)
        .host_path
        .as_ref()
        .unwrap_or_else(|| panic!("{path} of {} is not a hostPath volume", container.name));
    (host.path.clone(), mount.mount_propagation.clone())
}

/// The value of `--flag=VALUE` in `args`.
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    args.iter().find_map(|a| a.strip_prefix(prefix.as_str()))
}

/// The word after `flag` in a shell command line.
fn word_after<'a>(words: &[&'a str], flag: &str) -> &'a str {
    let i = words
        .iter()
        .position(|w| *w == flag)
        .unwrap_or_else(|| panic!("install-cni is run without {flag}"));
    words
        .get(i + 1)
        .unwrap_or_else(|| panic!("{flag} has no value"))
}

fn ipamd_socket(pod: &PodSpec) -> String {
    let args = container(pod, "ipamd").args.clone().unwrap_or_default();
    flag(&args, "--socket")
        .expect("ipamd is given --socket (the conflist, install-cni and the probe use it too)")
        .to_string()
}

fn conflist(cm: &ConfigMap) -> (String, Value) {
    let data = cm.data.as_ref().expect("the ConfigMap has data");
    let mut lists = data.iter().filter(|(k, _)| k.ends_with(".conflist"));
    let (key, text) = lists.next().expect("the ConfigMap holds a *.conflist");
    assert!(lists.next().is_none(), "one conflist in the ConfigMap");
    let json = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("ConfigMap key {key} is not valid JSON: {e}"));
    (key.clone(), json)
}

#[test]
fn manifests_parse_into_kubernetes_types_and_name_each_other() {
    let m = manifests();
    let ns = one(&m.namespaces, "Namespace");
    let ns_name = ns.metadata.name.as_deref().unwrap();
    let labels = ns.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("privileged"),
        "Pod Security Admission must allow a privileged hostNetwork pod in {ns_name}"
    );
    let sa = named(&m.service_accounts, "moor");
    let cm = one(&m.config_maps, "ConfigMap");
    let ds = one(&m.daemon_sets, "DaemonSet");
    for (what, namespace) in [
        ("ServiceAccount", &sa.metadata.namespace),
        ("ConfigMap", &cm.metadata.namespace),
        ("DaemonSet", &ds.metadata.namespace),
    ] {
        assert_eq!(namespace.as_deref(), Some(ns_name), "{what}'s namespace");
    }
    let role = named(&m.cluster_roles, "moor");
    let binding = named(&m.cluster_role_bindings, "moor");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        binding.role_ref.api_group.as_deref(),
        Some("rbac.authorization.k8s.io")
    );
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(
        subjects.len(),
        1,
        "the binding is for moor's service account only"
    );
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace.as_deref(), Some(ns_name));
    assert_eq!(
        pod_spec(ds).service_account_name,
        sa.metadata.name,
        "the DaemonSet runs as the bound service account"
    );
    // kubectl apply -f deploy/ goes in file name order: the Namespace first.
    let mut first = Manifests::default();
    let mut files: Vec<_> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    first
        .add_yaml("first", &std::fs::read_to_string(&files[0]).unwrap())
        .unwrap();
    assert_eq!(
        first.namespaces.len(),
        1,
        "{} is the Namespace",
        files[0].display()
    );
}

#[test]
fn loading_refuses_unknown_kinds_misspelled_fields_and_bad_values() {
    let cases = [
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n",
            "v1 Secret is not a kind deploy/ holds",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\nbogus: 1\n",
            "bogus is not a field",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {seconds: 60}\n",
            "ConfigMap x",
        ),
        (
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec:\n  selector: {}\n  \
             template:\n    spec:\n      containers:\n        - name: c\n          \
             volumeMounts:\n            - {name: v, mountPath: /run/netns, mountPropogation: \
             HostToContainer}\n",
            "spec.template.spec.containers[0].volumeMounts[0].mountPropogation is not a field",
        ),
        ("kind: ConfigMap\nmetadata: {name: x}\n", "no apiVersion"),
        // YAML 1.1, as kubectl reads it: `no` is false, not a name.
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: no}\n",
            "Namespace without metadata.name",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n{: [",
            "doc.yaml",
        ),
    ];
    for (yaml, expected) in cases {
        let err = Manifests::default()
            .add_yaml("doc.yaml", yaml)
            .expect_err(yaml);
        assert!(
            err.contains(expected),
            "{yaml}\n=> {err}\nwanted: {expected}"
        );
    }
    let mut ok = Manifests::default();
    ok.add_yaml(
        "doc.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    )
    .unwrap();
    assert_eq!((ok.config_maps.len(), ok.namespaces.len()), (1, 1));
}

#[test]
fn daemonset_has_the_node_agent_essentials() {
    let m = manifests();
    let ds = one(&m.daemon_sets, "DaemonSet");
    let spec = &ds.spec;
    let pod = pod_spec(ds);

    // Rolling update, one node at a time and never two ipamds on a node.
    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(
        rolling.max_surge,
        Some(IntOrString::Int(0)),
        "maxSurge 0: two ipamds would share a node's socket and state"
    );
    assert!(rolling.max_unavailable.is_some());
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert!(!selector.is_empty());
    assert!(
        selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "the selector matches the pods"
    );

    assert_eq!(pod.host_network, Some(true), "hostNetwork");
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "a toleration of every taint (operator Exists, no key, no effect)"
    );

    let ipamd = container(pod, "ipamd");
    assert_eq!(
        ipamd.security_context.as_ref().and_then(|s| s.privileged),
        Some(true),
        "ipamd is privileged"
    );
    let node_name = ipamd
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME in ipamd's env");
    assert_eq!(
        node_name
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("spec.nodeName"),
        "NODE_NAME comes from the downward API"
    );
    let args = ipamd.args.clone().unwrap_or_default();
    assert_eq!(flag(&args, "--node"), Some("$(NODE_NAME)"));
    assert!(
        flag(&args, "--tor").is_none(),
        "no --tor: each node's ToR comes from its label"
    );
    // Metrics on the node's address (Prometheus scrapes every node), on the
    // port the container declares.
    let metrics = flag(&args, "--metrics-listen").expect("--metrics-listen");
    let (host, port) = metrics.rsplit_once(':').expect("ADDRESS:PORT");
    assert_eq!(host, "$(NODE_IP)");
    let node_ip = ipamd.env.iter().flatten().find(|e| e.name == "NODE_IP");
    assert_eq!(
        node_ip
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("status.hostIP"),
        "NODE_IP comes from the downward API"
    );
    let declared = ipamd
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"));
    assert_eq!(
        declared.map(|p| p.container_port.to_string()),
        Some(port.to_string()),
        "the metrics port is declared"
    );

    // The host mounts of docs/install-kubernetes.md; the netns dirs see the
    // runtime's netns mounts made after ipamd started.
    for path in ["/run/netns", "/var/run/netns"] {
        let (host, propagation) = host_mount(pod, ipamd, path);
        assert_eq!(host, path, "{path} is the host's");
        assert_eq!(propagation.as_deref(), Some("HostToContainer"), "{path}");
    }
    let socket = ipamd_socket(pod);
    let socket_dir = socket.rsplit_once('/').unwrap().0;
    for path in [socket_dir, "/var/lib/moor"] {
        assert_eq!(host_mount(pod, ipamd, path).0, path, "{path} is the host's");
    }
    // Ready means ipamd serves and its store answers: an ipamctl read of the
    // node registry. Never CNI STATUS (the moor binary): it is "not ready"
    // while the ToR is undefined or the pools are full, and such a node is
    // healthy.
    let probe = ipamd.readiness_probe.as_ref().expect("a readiness probe");
    let command = probe
        .exec
        .as_ref()
        .and_then(|e| e.command.clone())
        .expect("the readiness probe runs a command");
    assert!(probe.http_get.is_none() && probe.tcp_socket.is_none() && probe.grpc.is_none());
    assert_eq!(command[0], "/usr/local/bin/ipamctl");
    assert!(
        command.windows(2).any(|w| w == ["node", "list"]),
        "{command:?}"
    );
    assert!(
        command
            .windows(2)
            .any(|w| w[0] == "--socket" && w[1] == socket),
        "the probe asks ipamd's socket: {command:?}"
    );
    assert!(
        !command
            .iter()
            .any(|w| w.contains("STATUS") || w.ends_with("/moor")),
        "{command:?}"
    );
    assert!(probe.timeout_seconds.is_some_and(|t| t >= 2));

    // install-cni: after ipamd answers (it waits itself), with the
    // ConfigMap's conflist and ipamd's socket, into the host's CNI dirs.
    let install = container(pod, "install-cni");
    assert_eq!(install.image, ipamd.image, "one image");
    let script = install
        .command
        .iter()
        .flatten()
        .chain(install.args.iter().flatten())
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    let words: Vec<&str> = script.split_whitespace().filter(|w| *w != "\\").collect();
    assert!(words.contains(&"/usr/local/bin/install-cni"), "{script}");
    assert_eq!(word_after(&words, "--socket"), socket);
    assert_eq!(word_after(&words, "--moor"), "/usr/local/bin/moor");
    assert_eq!(
        host_mount(pod, install, socket_dir).0,
        socket_dir,
        "install-cni asks ipamd through the host's socket dir"
    );
    for (flag, host) in [
        ("--bin-dir", "/opt/cni/bin"),
        ("--conf-dir", "/etc/cni/net.d"),
    ] {
        assert_eq!(host_mount(pod, install, word_after(&words, flag)).0, host);
    }
    let conflist_path = word_after(&words, "--conflist");
    let (conf_dir, conf_name) = conflist_path.rsplit_once('/').unwrap();
    let mount = install
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| v.mount_path == conf_dir)
        .expect("install-cni mounts the conflist's dir");
    let source = volume(pod, &mount.name)
        .config_map
        .as_ref()
        .expect("the conflist comes from the ConfigMap");
    let cm = one(&m.config_maps, "ConfigMap");
    assert_eq!(source.name, cm.metadata.name.clone().unwrap());
    let (key, _) = conflist(cm);
    assert!(
        source
            .items
            .iter()
            .flatten()
            .any(|i| i.key == key && i.path == conf_name),
        "{conflist_path} is the ConfigMap's {key}"
    );
}

#[test]
fn configmap_settings_are_ipamd_args_and_the_conflist_is_moor_first() {
    let m = manifests();
    let cm = one(&m.config_maps, "ConfigMap");
    let cm_name = cm.metadata.name.clone().unwrap();
    let data = cm.data.clone().unwrap();
    let pod = pod_spec(one(&m.daemon_sets, "DaemonSet"));
    let ipamd = container(pod, "ipamd");
    let socket = ipamd_socket(pod);

    let (conflist_key, json) = conflist(cm);
    assert!(
        json["cniVersion"].is_string() && json["name"].is_string(),
        "{json}"
    );
    assert_eq!(
        json["plugins"][0]["type"], "moor",
        "moor is the first plugin"
    );
    assert_eq!(
        json["plugins"][0]["socket"], socket,
        "the plugin asks the socket ipamd serves"
    );

    // Every setting is `--KEY=$(VAR)` with VAR the ConfigMap's KEY, and
    // every $(VAR) of the args is defined.
    let env: BTreeMap<&str, _> = ipamd
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e))
        .collect();
    let args = ipamd.args.clone().unwrap_or_default();
    let mut used = BTreeSet::new();
    for arg in &args {
        let Some(var) = arg
            .split_once("$(")
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(var, _)| var)
        else {
            continue;
        };
        let env = env
            .get(var)
            .unwrap_or_else(|| panic!("{arg}: $({var}) is not in ipamd's env"));
        let Some(key_ref) = env
            .value_from
            .as_ref()
            .and_then(|v| v.config_map_key_ref.as_ref())
        else {
            continue; // NODE_NAME, from the downward API
        };
        assert_eq!(key_ref.name, cm_name, "{var}");
        assert_ne!(
            key_ref.optional,
            Some(true),
            "{var}: a setting is never optional"
        );
        assert!(
            data.contains_key(&key_ref.key),
            "{var}: the ConfigMap has no key {}",
            key_ref.key
        );
        assert_eq!(
            arg,
            &format!("--{}=$({var})", key_ref.key),
            "a setting is the ipamd flag of its name"
        );
        used.insert(key_ref.key.clone());
    }
    let settings: BTreeSet<String> = data
        .keys()
        .filter(|k| **k != conflist_key)
        .cloned()
        .collect();
    assert_eq!(used, settings, "every setting is passed to ipamd, once");

    for (key, value) in &data {
        assert!(!value.trim().is_empty(), "{key} is empty");
    }
    assert!(
        data["store"].starts_with("etcd:") || data["store"].starts_with("redb:"),
        "store"
    );
    assert!(matches!(data["mode"].as_str(), "physical" | "ovs"));
    if let Some(path) = data["store"].strip_prefix("redb:") {
        assert!(
            path.starts_with("/var/lib/moor/"),
            "a redb store lives in the host's /var/lib/moor"
        );
    }
    data["reconcile-interval-seconds"]
        .parse::<u64>()
        .expect("reconcile-interval-seconds is a whole number");
}

#[test]
fn cluster_role_grants_exactly_what_ipamd_uses() {
    let grants = manifests().grants().unwrap();
    let expected: BTreeSet<Grant> = [
        ("", "pods", "get"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        ("batch", "jobs", "get"),
        ("", "events", "create"),
        ("", "events", "patch"),
    ]
    .into_iter()
    .map(|(g, r, v)| Grant::new(g, r, v))
    .collect();
    let show = |set: Vec<&Grant>| set.iter().map(|g| g.to_string()).collect::<Vec<_>>();
    assert!(
        grants == expected,
        "the ClusterRole grants {:?} beyond what ipamd uses and lacks {:?}",
        show(grants.difference(&expected).collect()),
        show(expected.difference(&grants).collect())
    );
    assert_eq!(super::cluster_role_grants(), expected);
    assert_eq!(
        Grant::new("batch", "jobs", "get").to_string(),
        "jobs.batch get"
    );
    assert_eq!(Grant::new("", "pods", "watch").to_string(), "pods watch");

    let mut wild = Manifests::default();
    wild.add_yaml(
        "wild.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: w}\n\
         rules:\n  - {apiGroups: [\"\"], resources: [pods], verbs: [\"*\"]}\n",
    )
    .unwrap();
    assert!(wild.role_grants("w").unwrap_err().contains("wildcard"));
}

#[test]
fn requests_map_to_the_grants_the_api_server_checks() {
    let cases = [
        (
            "GET",
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1&limit=500",
            "pods list",
        ),
        (
            "GET",
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1&watch=true&resourceVersion=7",
            "pods watch",
        ),
        ("GET", "/api/v1/namespaces/shop/pods/web-0", "pods get"),
        ("GET", "/api/v1/namespaces", "namespaces list"),
        ("GET", "/api/v1/namespaces?watch=1", "namespaces watch"),
        ("GET", "/api/v1/namespaces/shop", "namespaces get"),
        (
            "PUT",
            "/api/v1/namespaces/shop/finalize",
            "namespaces/finalize update",
        ),
        (
            "GET",
            "/api/v1/nodes?fieldSelector=metadata.name%3Dn1",
            "nodes list",
        ),
        ("GET", "/api/v1/nodes/n1", "nodes get"),
        ("GET", "/api/v1/watch/nodes", "nodes watch"),
        (
            "GET",
            "/apis/batch/v1/namespaces/shop/jobs/backup-28",
            "jobs.batch get",
        ),
        ("POST", "/api/v1/namespaces/shop/events", "events create"),
        (
            "PATCH",
            "/api/v1/namespaces/shop/events/web-0.17a",
            "events patch",
        ),
        (
            "GET",
            "/apis/events.k8s.io/v1/namespaces/shop/events",
            "events.events.k8s.io list",
        ),
        (
            "PATCH",
            "/api/v1/namespaces/shop/pods/web-0/status",
            "pods/status patch",
        ),
        (
            "DELETE",
            "/api/v1/namespaces/shop/pods",
            "pods deletecollection",
        ),
        (
            "DELETE",
            "/api/v1/namespaces/shop/pods/web-0",
            "pods delete",
        ),
    ];
    for (method, uri, grant) in cases {
        assert_eq!(
            Grant::of_request(method, uri).unwrap().to_string(),
            grant,
            "{method} {uri}"
        );
    }
    for (method, uri) in [
        ("GET", "/healthz"),
        ("GET", "/apis/batch/v1"),
        ("OPTIONS", "/api/v1/pods"),
    ] {
        assert!(Grant::of_request(method, uri).is_err(), "{method} {uri}");
    }
}

/// The Containerfile's instructions: continuation lines joined, comments
/// and blank lines dropped; (KEYWORD, arguments).
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((keyword.to_ascii_uppercase(), args.trim().to_string()));
                current.clear();
            }
        }
    }
    assert!(
        current.is_empty(),
        "the Containerfile ends in a continuation"
    );
    out
}

#[test]
fn containerfile_builds_the_image_from_this_repository() {
    let root = repo_root();
    let text = std::fs::read_to_string(dir().join("Containerfile")).unwrap();
    let instructions = instructions(&text);
    let froms: Vec<&str> = instructions
        .iter()
        .filter(|(k, _)| k == "FROM")
        .map(|(_, a)| a.as_str())
        .collect();
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );
    assert!(froms[0].contains("rust:1-bookworm") && froms[0].ends_with(" AS build"));
    assert!(froms[1].ends_with("debian:bookworm-slim"));
    let runs: Vec<&str> = instructions
        .iter()
        .filter(|(k, _)| k == "RUN")
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(runs
        .iter()
        .any(|r| r.contains("cargo build --release --locked")));
    assert!(
        runs.iter()
            .any(|r| r.contains("apt-get install") && r.contains(" jq")),
        "install-cni needs jq"
    );

    // What the build stage copies from the repository, and the files the
    // runtime stage puts into the image.
    let mut copied_sources = BTreeSet::new();
    let mut image_files = BTreeSet::new();
    let mut stage = 0;
    for (keyword, args) in &instructions {
        if keyword == "FROM" {
            stage += 1;
        }
        if keyword != "COPY" {
            continue;
        }
        assert!(!args.starts_with('['), "COPY in the plain form: {args}");
        let words: Vec<&str> = args.split_whitespace().collect();
        let (options, paths): (Vec<&str>, Vec<&str>) =
            words.iter().partition(|w| w.starts_with("--"));
        let (dest, sources) = paths.split_last().expect("COPY SRC... DEST");
        let from_build = options.contains(&"--from=build");
        for source in sources {
            if !from_build {
                assert!(
                    root.join(source).exists(),
                    "COPY {source}: no such path in the repository"
                );
                copied_sources.insert(source.to_string());
            }
            if stage == 2 {
                image_files.insert(match dest.strip_suffix('/') {
                    Some(dir) => format!("{dir}/{}", source.rsplit('/').next().unwrap()),
                    None => dest.to_string(),
                });
            }
        }
    }
    for file in [
        "/usr/local/bin/ipamd",
        "/usr/local/bin/ipamctl",
        "/usr/local/bin/moor",
        "/usr/local/bin/install-cni",
    ] {
        assert!(
            image_files.contains(file),
            "the image has {file}: {image_files:?}"
        );
    }
    assert!(copied_sources.contains("scripts/install-cni"));

    // cargo reads every workspace member, so the build stage copies them all.
    for member in workspace_members() {
        assert!(
            copied_sources.contains(&member),
            "workspace member {member} is not copied into the build stage"
        );
    }
    for file in ["Cargo.toml", "Cargo.lock", ".cargo"] {
        assert!(copied_sources.contains(file), "{file} is copied");
    }
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        "target/ stays out of the build context"
    );

    // The DaemonSet runs what the image holds.
    let m = manifests();
    let pod = pod_spec(one(&m.daemon_sets, "DaemonSet"));
    let ipamd = container(pod, "ipamd");
    assert_eq!(
        ipamd.command.as_deref(),
        Some(&["/usr/local/bin/ipamd".to_string()][..])
    );
}

/// The `members` of the root Cargo.toml, read without a TOML parser: the
/// list is one line of quoted names.
fn workspace_members() -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("the workspace lists its members");
    let list = line.split_once('[').unwrap().1.split_once(']').unwrap().0;
    list.split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn docs_name_only_deploy_files_that_exist() {
    let root = repo_root();
    for doc in ["docs/install-kubernetes.md", "README.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for (i, _) in text.match_indices("deploy/") {
            let name: String = text[i + "deploy/".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
                .collect();
            let name = name.trim_end_matches('.');
            if !name.is_empty() {
                assert!(
                    dir().join(name).exists(),
                    "{doc} names deploy/{name}, which does not exist"
                );
            }
        }
    }
}

/// Every flag the DaemonSet passes is one the ipamd binary of this checkout
/// knows, so the manifests cannot drift from the daemon they start.
#[test]
fn daemonset_passes_only_flags_ipamd_knows() {
    let m = manifests();
    let ds: &DaemonSet = one(&m.daemon_sets, "DaemonSet");
    let pod = pod_spec(ds);
    let ipamd = container(pod, "ipamd");
    let out = std::process::Command::new(&crate::bins::bins().ipamd)
        .arg("--help")
        .output()
        .expect("run ipamd --help");
    assert!(out.status.success(), "ipamd --help failed");
    let help = String::from_utf8_lossy(&out.stdout);
    let args = ipamd.args.clone().unwrap_or_default();
    let flags: Vec<&str> = args
        .iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a))
        .collect();
    assert!(
        flags.len() >= 5,
        "the DaemonSet passes ipamd its settings: {args:?}"
    );
    for f in flags {
        assert!(
            help.contains(&format!("--{f} "))
                || help.contains(&format!("--{f}\n"))
                || help.contains(&format!("--{f} <")),
            "ipamd has no flag --{f} (the DaemonSet passes it): ipamd --help says\n{help}"
        );
    }
}

#[test]
fn controller_deployment_runs_the_controller_role_with_its_own_account() {
    let m = manifests();
    let d = named(&m.deployments, "moor-controller");
    let spec = &d.spec;
    assert_eq!(spec.replicas, Some(2), "one leader and one standby");
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("moor-controller"));
    let c = container(pod, "controller");
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(flag(&args, "--role"), Some("controller"));
    assert!(
        flag(&args, "--bridge").is_none(),
        "the controller runs no datapath"
    );
    // Every flag is one ipamd has.
    let out = std::process::Command::new(&crate::bins::bins().ipamd)
        .arg("--help")
        .output()
        .expect("run ipamd --help");
    let help = String::from_utf8_lossy(&out.stdout);
    for a in &args {
        let f = a.split('=').next().unwrap();
        assert!(help.contains(&format!("{f} ")), "ipamd has no flag {f}");
    }
    let ns = d.metadata.namespace.as_deref();
    assert_eq!(
        named(&m.service_accounts, "moor-controller")
            .metadata
            .namespace
            .as_deref(),
        ns
    );

    // Its grants, exactly: the Lease in its namespace, workloads read-only,
    // pods and nodes read-only (garbage collection), namespaces read-only
    // (the webhook's), the whitelist ConfigMaps, Events.
    let mut expected: BTreeSet<Grant> = [
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "update"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
        ("", "configmaps", "get"),
        ("", "configmaps", "create"),
        ("", "configmaps", "update"),
        ("", "configmaps", "delete"),
        ("", "events", "create"),
        ("", "events", "patch"),
    ]
    .into_iter()
    .map(|(g, r, v)| Grant::new(g, r, v))
    .collect();
    for (group, resource) in [
        ("apps", "statefulsets"),
        ("apps", "deployments"),
        ("apps", "daemonsets"),
        ("apps", "replicasets"),
        ("batch", "jobs"),
    ] {
        for verb in ["get", "list", "watch"] {
            expected.insert(Grant::new(group, resource, verb));
        }
    }
    assert_eq!(m.role_grants("moor-controller").unwrap(), expected);
    let role = named(&m.roles, "moor-controller");
    assert_eq!(
        role.metadata.namespace.as_deref(),
        ns,
        "the Lease's Role is namespaced"
    );
    assert!(
        role.rules
            .iter()
            .flatten()
            .all(|r| r.api_groups.as_deref() == Some(&["coordination.k8s.io".to_string()][..])),
        "the namespaced Role grants only Leases"
    );
    for (kind, role_ref, subjects) in [
        (
            "ClusterRoleBinding",
            &named(&m.cluster_role_bindings, "moor-controller").role_ref,
            &named(&m.cluster_role_bindings, "moor-controller").subjects,
        ),
        (
            "RoleBinding",
            &named(&m.role_bindings, "moor-controller").role_ref,
            &named(&m.role_bindings, "moor-controller").subjects,
        ),
    ] {
        assert_eq!(role_ref.name, "moor-controller", "{kind}");
        let s = subjects.as_deref().unwrap_or_default();
        assert_eq!(s.len(), 1, "{kind}");
        assert_eq!(
            (s[0].name.as_str(), s[0].namespace.as_deref()),
            ("moor-controller", ns),
            "{kind}"
        );
    }
    // The node agent's ClusterRole is untouched by the controller's needs.
    assert!(m
        .grants()
        .unwrap()
        .iter()
        .all(|g| g.api_group != "coordination.k8s.io"));
}

#[test]
fn the_webhook_reaches_the_controller_that_serves_it() {
    let m = manifests();
    let ns = one(&m.namespaces, "Namespace")
        .metadata
        .name
        .clone()
        .unwrap();
    let mwc = named(&m.mutating_webhooks, "moor");
    let hooks = mwc.webhooks.as_deref().unwrap_or_default();
    assert_eq!(hooks.len(), 1, "one webhook");
    let h = &hooks[0];
    assert_eq!(h.admission_review_versions, ["v1"]);
    assert_eq!(h.side_effects, "None", "it only reads");
    assert_eq!(h.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(h.reinvocation_policy.as_deref(), Some("Never"));
    let timeout = h.timeout_seconds.expect("a timeout is set");
    assert!((1..=3).contains(&timeout), "a short timeout: {timeout}");
    // Pod CREATE only.
    let rules = h.rules.as_deref().unwrap_or_default();
    assert_eq!(rules.len(), 1);
    let r = &rules[0];
    assert_eq!(r.operations.as_deref(), Some(&["CREATE".to_string()][..]));
    assert_eq!(r.api_groups.as_deref(), Some(&[String::new()][..]));
    assert_eq!(r.api_versions.as_deref(), Some(&["v1".to_string()][..]));
    assert_eq!(r.resources.as_deref(), Some(&["pods".to_string()][..]));
    // Skips kube-system and moor's own namespace by their name label.
    let sel = h.namespace_selector.as_ref().expect("a namespace selector");
    let exprs = sel.match_expressions.as_deref().unwrap_or_default();
    assert_eq!(exprs.len(), 1);
    assert_eq!(exprs[0].key, "kubernetes.io/metadata.name");
    assert_eq!(exprs[0].operator, "NotIn");
    let skipped = exprs[0].values.clone().unwrap_or_default();
    assert!(
        skipped.contains(&"kube-system".to_string()) && skipped.contains(&ns),
        "{skipped:?}"
    );

    // The Service it calls selects the controller's pods, on the port its
    // container serves, at the path ipamd serves.
    let svc_ref = h.client_config.service.as_ref().expect("a Service");
    assert_eq!(
        svc_ref.path.as_deref(),
        Some(moor_ipamd::controller::webhook::PATH)
    );
    assert_eq!(svc_ref.namespace, ns);
    let svc = named(&m.services, &svc_ref.name);
    assert_eq!(svc.metadata.namespace.as_deref(), Some(ns.as_str()));
    let spec = svc.spec.as_ref().unwrap();
    let port = spec
        .ports
        .iter()
        .flatten()
        .find(|p| Some(p.port) == svc_ref.port.or(Some(443)))
        .expect("the Service has the webhook's port");
    let d = named(&m.deployments, "moor-controller");
    let labels = d
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap_or_default();
    for (k, v) in spec.selector.iter().flatten() {
        assert_eq!(
            labels.get(k),
            Some(v),
            "the Service selects the controller's pods"
        );
    }
    let pod = d.spec.template.spec.as_ref().unwrap();
    let c = container(pod, "controller");
    let cport = c
        .ports
        .iter()
        .flatten()
        .find(|p| match &port.target_port {
            Some(IntOrString::String(name)) => p.name.as_deref() == Some(name.as_str()),
            Some(IntOrString::Int(n)) => p.container_port == *n,
            None => p.container_port == port.port,
        })
        .expect("the Service's targetPort is a port of the controller");
    let args = c.args.clone().unwrap_or_default();
    let listen = flag(&args, "--webhook-listen").expect("the controller serves the webhook");
    assert!(
        listen.ends_with(&format!(":{}", cport.container_port)),
        "--webhook-listen {listen} is the container port {}",
        cport.container_port
    );
    // Its certificate and key from the Secret the docs make.
    let mount = |file: &str| {
        let path = flag(&args, file).unwrap_or_else(|| panic!("{file} is given"));
        let m = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| path.starts_with(&format!("{}/", m.mount_path)))
            .unwrap_or_else(|| panic!("{path} is not on a mount"));
        let v = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .unwrap();
        v.secret
            .as_ref()
            .and_then(|s| s.secret_name.clone())
            .unwrap()
    };
    let secret = mount("--webhook-cert");
    assert_eq!(mount("--webhook-key"), secret);
    assert_eq!(secret, "moor-webhook-tls");
    // The two documented ways to make it: scripts/webhook-cert and the
    // cert-manager Certificate, for the Service's DNS name.
    let script = std::fs::read_to_string(repo_root().join("scripts/webhook-cert")).unwrap();
    assert!(script.contains(&format!("secret tls {secret}")));
    assert!(script.contains(&format!(
        "mutatingwebhookconfiguration {}",
        mwc.metadata.name.as_deref().unwrap()
    )));
    assert!(
        script.contains(&format!("namespace={ns}")) && script.contains("service=moor-webhook.")
    );
    let text =
        std::fs::read_to_string(dir().join("cert-manager/webhook-certificate.yaml")).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let cert = docs
        .iter()
        .find(|d| d["kind"] == "Certificate" && d["spec"]["secretName"] == secret.as_str())
        .expect("a Certificate into the Secret");
    let dns = format!("{}.{ns}.svc", svc_ref.name);
    assert!(cert["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == dns.as_str()));
    let inject =
        mwc.metadata.annotations.as_ref().unwrap()["cert-manager.io/inject-ca-from"].clone();
    assert_eq!(
        inject,
        format!("{ns}/{}", cert["metadata"]["name"].as_str().unwrap())
    );
}
