//! Issue 10, the node agent: containerd drives moor through CRI as for
//! kubelet, and ipamd reads this node's pods, the namespaces and its Node
//! from a Kubernetes API (moor-testkit's fake server, seeded as the
//! controllers make objects). Each test ends by checking that deploy/'s
//! ClusterRole grants every request its ipamd sent; the last one that it
//! grants nothing else.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use moor_e2e::containerd::{CriNode, Kube, Options, Sandbox, NODE_TOR_LABEL, POD_NAMESPACE};
use moor_e2e::deploy::cluster_role_grants;
use moor_e2e::names::container_id;
use moor_proto::cni_code;
use moor_testkit::kubeapi::objects::{
    bare_pod, cronjob_job, deployment_pod, job_pod, new_uid, statefulset_pod,
};
use moor_testkit::kubeapi::{ApiRequest, Resource};
use serde_json::Value;

use super::wait_for;

/// `ipamctl pool create NAME --namespace NS --app APP --size N extra...`.
fn pool(node: &CriNode, name: &str, namespace: &str, app: &str, size: u32, extra: &[&str]) {
    let size = size.to_string();
    let mut args = vec![
        "pool",
        "create",
        name,
        "--namespace",
        namespace,
        "--app",
        app,
        "--size",
        &size,
    ];
    args.extend_from_slice(extra);
    node.ctl().ok(&args);
}

fn name_of(pod: &Value) -> &str {
    pod["metadata"]["name"].as_str().expect("pod name")
}

fn uid_of(pod: &Value) -> &str {
    pod["metadata"]["uid"].as_str().expect("pod uid")
}

fn run_ok(node: &CriNode, pod: &Value) -> Sandbox {
    node.run_pod(pod).unwrap_or_else(|e| {
        panic!(
            "RunPodSandbox {}/{}: {e}",
            pod["metadata"]["namespace"],
            name_of(pod)
        )
    })
}

/// The pool `ip` belongs to, from `ipamctl ip list`.
fn pool_of(node: &CriNode, ip: Ipv4Addr) -> String {
    let e = node
        .ip_entry(ip)
        .unwrap_or_else(|| panic!("{ip} is in no pool"));
    e["pool"].as_str().unwrap_or_default().to_string()
}

/// The requests that are not a watch: what the ADD and DEL paths cost.
fn not_watches(requests: &[ApiRequest]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| !r.is_watch())
        .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
        .collect()
}

/// Event writes (create or patch, either event API).
fn event_writes(requests: &[ApiRequest]) -> usize {
    requests
        .iter()
        .filter(|r| r.resource == "events" && matches!(r.verb.as_str(), "create" | "patch"))
        .count()
}

/// The core/v1 Events about pod `name`.
fn events_of(node: &CriNode, name: &str) -> Vec<Value> {
    node.api()
        .objects(Resource::Events)
        .into_iter()
        .filter(|e| e["involvedObject"]["name"] == name)
        .collect()
}

/// Done-when 1: the pod's controller, not its name, picks its pool and
/// whether its IP stays; pod annotation > the workload's pool > namespace
/// annotation > the config's pool; a pool of another namespace only when it
/// allows the pod's.
#[test]
fn kube_pool_and_stickiness_come_from_the_pods_owner_not_its_name() {
    let node = CriNode::new(Options {
        default_pool: Some("fallback".into()),
        ..Options::kube()
    });
    let shop = POD_NAMESPACE;
    node.create_namespace("annotated", Some("nsdefault"));
    node.create_namespace("other", None);
    for (name, ns, extra) in [
        ("db", shop, &["--policy", "auto"][..]),
        ("cache", shop, &["--policy", "auto"]),
        ("frontend", shop, &[]),
        ("fallback", shop, &[]),
        ("reg", "annotated", &[]),
        ("podpick", "annotated", &[]),
        ("nsdefault", "annotated", &[]),
        ("shared", shop, &["--allow-namespace", "other"]),
    ] {
        pool(&node, name, ns, name, 3, extra);
    }

    // A StatefulSet pod keeps its IP across a new pod object (new uid) and
    // a new sandbox.
    let db0 = node.create_pod(statefulset_pod(shop, "db", 0));
    let first = run_ok(&node, &db0);
    assert_eq!(pool_of(&node, first.ip), "db");
    node.stop_and_remove(&first.id);
    let kept = node.ip_entry(first.ip).unwrap();
    assert_eq!(kept["state"], "bound", "db-0 deleted: {kept}");
    node.delete_pod(shop, "db-0");
    let db0_again = node.create_pod(statefulset_pod(shop, "db", 0));
    assert_ne!(uid_of(&db0_again), uid_of(&db0));
    let second = run_ok(&node, &db0_again);
    assert_ne!(second.id, first.id);
    assert_eq!(second.ip, first.ip, "db-0 re-created with another IP");

    // A ReplicaSet pod named like an ordinal (the name rule would keep its
    // IP): Deployment cache's, and gives its IP back.
    let cache0 = node.create_pod(deployment_pod(shop, "cache", "5d8f7b9c4").name("cache-0"));
    let c = run_ok(&node, &cache0);
    assert_eq!(pool_of(&node, c.ip), "cache");
    node.stop_and_remove(&c.id);
    let back = node.ip_entry(c.ip).unwrap();
    assert_eq!(back["state"], "free", "cache-0's IP stayed bound: {back}");
    assert!(back["binding"].is_null(), "{back}");

    // A Deployment pod whose suffix is not the name generator's alphabet:
    // no name rule finds `frontend` in it (it would be a bare pod, which
    // takes the config's pool and keeps its IP); its owner does.
    let odd = node
        .create_pod(deployment_pod(shop, "frontend", "5d8f7b9c4").name("frontend-5d8f7b9c4-aeiou"));
    let f = run_ok(&node, &odd);
    assert_eq!(pool_of(&node, f.ip), "frontend", "{odd}");
    node.stop_and_remove(&f.id);
    assert_eq!(node.ip_entry(f.ip).unwrap()["state"], "free");

    // The order: pod annotation > the workload's registered pool >
    // namespace annotation > the config's pool.
    let cases = [
        // No registered pool for `plain`: its namespace's annotation, not
        // the config's default.
        (node.create_pod(bare_pod("annotated", "plain")), "nsdefault"),
        // StatefulSet reg has a pool: it beats the namespace's annotation.
        (
            node.create_pod(statefulset_pod("annotated", "reg", 0)),
            "reg",
        ),
        // The pod's annotation beats its workload's pool.
        (
            node.create_pod(
                statefulset_pod("annotated", "reg", 1).annotation("moor.io/pool", "podpick"),
            ),
            "podpick",
        ),
        // Nothing else: the config's pool.
        (node.create_pod(bare_pod(shop, "lonely")), "fallback"),
    ];
    let mut running = vec![second];
    for (pod, want) in &cases {
        let s = run_ok(&node, pod);
        assert_eq!(pool_of(&node, s.ip), *want, "pod {}", name_of(pod));
        running.push(s);
    }

    // A pod of namespace other naming pool db of namespace shop: refused,
    // with the pool and both namespaces named; nothing allocated.
    let before = node.ip_list();
    let intruder = node.create_pod(bare_pod("other", "intruder").annotation("moor.io/pool", "db"));
    let err = node
        .run_pod(&intruder)
        .expect_err("a pod of namespace other got pool db of namespace shop");
    let msg = err.message().to_string();
    for part in ["pool db", "namespace shop", "pods of namespace other"] {
        assert!(
            msg.contains(part),
            "the refusal does not say {part:?}: {msg}"
        );
    }
    let direct = node.moor_add(&intruder, &container_id());
    assert_eq!(
        direct.err_code("ADD of other/intruder"),
        u64::from(cni_code::POOL_NOT_ALLOWED),
        "{}",
        direct.stdout
    );
    assert!(
        direct.message().contains("--allow-namespace other"),
        "{}",
        direct.message()
    );
    assert_eq!(node.ip_list(), before, "a refused ADD changed the IPs");
    // A pool made with --allow-namespace other takes it.
    let guest = node.create_pod(bare_pod("other", "guest").annotation("moor.io/pool", "shared"));
    let g = run_ok(&node, &guest);
    assert_eq!(pool_of(&node, g.ip), "shared");
    running.push(g);

    for s in &running {
        node.stop_and_remove(&s.id);
    }
    let left = node.leftovers();
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
    node.assert_api_requests_granted();
}

/// Done-when 2: ADDs (and DELs) of pods the cache holds cost the API
/// nothing; a uid the cache does not hold costs one GET.
#[test]
fn kube_adds_of_cached_pods_send_no_api_request() {
    let node = CriNode::new(Options::kube());
    pool(&node, "web", POD_NAMESPACE, "web", 20, &[]);
    pool(&node, "db", POD_NAMESPACE, "db", 20, &[]);
    let mut pods: Vec<Value> = (0..10)
        .map(|i| node.create_pod(statefulset_pod(POD_NAMESPACE, "db", i)))
        .collect();
    pods.extend(
        (0..10).map(|_| node.create_pod(deployment_pod(POD_NAMESPACE, "web", "7d9f8c6b5"))),
    );
    // ipamd serves only once its first lists arrived: restarted now, its
    // cache holds the 20 pods.
    node.restart_ipamd();
    let api = node.api();
    assert!(
        api.wait_open_watches(3, Duration::from_secs(10)),
        "ipamd's watches of pods, namespaces and its node are not open"
    );
    api.clear_requests();
    let start = Instant::now();
    let sandboxes: Vec<Sandbox> = pods.iter().map(|p| run_ok(&node, p)).collect();
    let adds = start.elapsed();
    for s in &sandboxes {
        node.stop_and_remove(&s.id);
    }
    eprintln!(
        "20 RunPodSandbox of cached pods in {adds:?}, then 20 Stop+Remove in {:?}",
        start.elapsed() - adds
    );
    let during = api.requests();
    assert_eq!(
        not_watches(&during),
        Vec::<String>::new(),
        "20 ADDs and DELs of cached pods sent requests to the API"
    );
    assert_eq!(node.api().objects(Resource::Events), Vec::<Value>::new());

    // A sandbox whose uid is not the pod's (the API has another
    // incarnation): one GET, then code 11 naming the pod; nothing
    // allocated.
    let db1 = &pods[1];
    let mut stale = db1.clone();
    stale["metadata"]["uid"] = new_uid().into();
    let before = node.ip_list();
    api.clear_requests();
    let r = node.moor_add(&stale, &container_id());
    assert_eq!(
        r.err_code("ADD with a uid the API does not have"),
        u64::from(cni_code::TRY_AGAIN_LATER)
    );
    let msg = r.message();
    assert!(
        msg.contains("shop/db-1") && msg.contains(uid_of(&stale)),
        "{msg}"
    );
    assert_eq!(node.ip_list(), before);
    let gets: Vec<ApiRequest> = api
        .requests()
        .into_iter()
        .filter(|r| r.resource == "pods" && r.verb == "get")
        .collect();
    assert_eq!(gets.len(), 1, "a uid mismatch costs one GET: {gets:?}");
    assert_eq!(gets[0].name.as_deref(), Some("db-1"));

    // db-0 deleted and re-created (a new uid) just before its sandbox: at
    // most one GET (none if the watch was first), and its IP back.
    let old_ip = sandboxes[0].ip;
    node.delete_pod(POD_NAMESPACE, "db-0");
    let again = node.create_pod(statefulset_pod(POD_NAMESPACE, "db", 0));
    api.clear_requests();
    let s = run_ok(&node, &again);
    assert_eq!(s.ip, old_ip, "db-0 re-created with another IP");
    let other: Vec<String> = not_watches(&api.requests());
    assert!(
        other.len() <= 1
            && other
                .iter()
                .all(|r| r.starts_with("GET /api/v1/namespaces/shop/pods/db-0")),
        "a re-created pod costs at most one GET: {other:?}"
    );
    eprintln!("db-0 re-created just before its sandbox: {other:?}");
    node.stop_and_remove(&s.id);
    let left = node.leftovers();
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
    node.assert_api_requests_granted();
}

/// Done-when 3: with the API down a cached pod starts, an unknown one fails
/// fast with code 11 and nothing allocated; after the API is back, and
/// after a 410 Gone, ipamd follows new objects without a restart.
#[test]
fn kube_api_outage_410_and_return_without_restarting_ipamd() {
    const DEADLINE: Duration = Duration::from_secs(2);
    let node = CriNode::new(Options::kube());
    let api = node.api();
    pool(&node, "keep", POD_NAMESPACE, "keep", 3, &[]);
    pool(&node, "nightly", POD_NAMESPACE, "nightly", 2, &[]);
    let keep = node.create_pod(statefulset_pod(POD_NAMESPACE, "keep", 0));
    let job = api.create(cronjob_job(POD_NAMESPACE, "nightly", 1_700_000_100));
    let job_pod = node.create_pod(job_pod(&job));
    node.restart_ipamd(); // the cache holds keep-0 and the Job's pod
                          // A CronJob's pod draws from the CronJob's pool, which only its Job
                          // says: the Job is looked up when its pod arrives in the cache, not
                          // at the ADD, which may come while the API is down.
    wait_for(
        "the Job of a cached pod looked up",
        Duration::from_secs(10),
        || {
            api.requests()
                .iter()
                .any(|r| r.resource == "jobs" && r.verb == "get")
        },
    );

    api.stop();
    let s = run_ok(&node, &keep);
    assert_eq!(pool_of(&node, s.ip), "keep");
    let j = run_ok(&node, &job_pod);
    assert_eq!(pool_of(&node, j.ip), "nightly");
    node.stop_and_remove(&j.id);

    let ghost = bare_pod(POD_NAMESPACE, "ghost")
        .node(&node.id)
        .uid(&new_uid())
        .build();
    let before = node.ip_list();
    let r = node.moor_add(&ghost, &container_id());
    assert_eq!(
        r.err_code("ADD of a pod the cache lacks, API down"),
        u64::from(cni_code::TRY_AGAIN_LATER)
    );
    assert!(
        r.took < DEADLINE,
        "an ADD against a dead API took {:?}, over the {DEADLINE:?} deadline",
        r.took
    );
    eprintln!(
        "ADD of an unknown pod, API down: code 11 in {:?} ({:?} inside the {DEADLINE:?} deadline): {}",
        r.took,
        DEADLINE - r.took,
        r.message()
    );
    assert!(r.message().contains("shop/ghost"), "{}", r.message());
    let err = node
        .run_pod(&ghost)
        .expect_err("a sandbox of an unknown pod started with the API down");
    assert!(err.message().contains("shop/ghost"), "{err}");
    assert_eq!(node.ip_list(), before, "a refused ADD changed the IPs");
    // A DEL never waits on the API.
    let del = Instant::now();
    node.stop_and_remove(&s.id);
    assert!(
        del.elapsed() < Duration::from_secs(5),
        "{:?}",
        del.elapsed()
    );

    // While the API is down, a namespace whose annotation names the pool
    // and a pod of it: the pod has no pool of its own, so only the
    // namespace, which only the watch brings, gives it one.
    api.create(
        moor_testkit::kubeapi::objects::namespace("late").annotation("moor.io/pool", "late"),
    );
    pool(&node, "late", "late", "late", 2, &[]);
    let worker = node.create_pod(bare_pod("late", "worker"));
    let mark = api.requests().len();
    api.restart();
    let back = Instant::now();
    let served = poll_run(&node, &worker, Duration::from_secs(40));
    assert_eq!(pool_of(&node, served.ip), "late");
    eprintln!(
        "API back: a new pod of a new namespace served after {:?}",
        back.elapsed()
    );
    let rewatched: BTreeSet<String> = api.requests()[mark..]
        .iter()
        .filter(|r| r.is_watch())
        .map(|r| r.resource.clone())
        .collect();
    assert!(rewatched.contains("namespaces"), "{rewatched:?}");

    // 410 Gone: every watch is ended, and the next ones expire; ipamd
    // relists and follows what changed meanwhile.
    assert!(
        api.wait_open_watches(3, Duration::from_secs(40)),
        "ipamd did not watch pods, namespaces and its node again"
    );
    let mark = api.requests().len();
    api.expire_next_watches(3);
    api.end_watches();
    api.create(
        moor_testkit::kubeapi::objects::namespace("later").annotation("moor.io/pool", "later"),
    );
    pool(&node, "later", "later", "later", 2, &[]);
    let worker2 = node.create_pod(bare_pod("later", "worker"));
    let gone = Instant::now();
    let served2 = poll_run(&node, &worker2, Duration::from_secs(40));
    assert_eq!(pool_of(&node, served2.ip), "later");
    eprintln!(
        "after a 410: a new pod of a new namespace served after {:?}",
        gone.elapsed()
    );
    wait_for(
        "ipamd relisting pods, namespaces and its node after the 410",
        Duration::from_secs(40),
        || {
            let relisted: BTreeSet<String> = api.requests()[mark..]
                .iter()
                .filter(|r| r.verb == "list")
                .map(|r| r.resource.clone())
                .collect();
            ["pods", "namespaces", "nodes"]
                .iter()
                .all(|r| relisted.contains(*r))
        },
    );

    for s in [&served, &served2] {
        node.stop_and_remove(&s.id);
    }
    let left = node.leftovers();
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
    node.assert_api_requests_granted();
}

/// RunPodSandbox `pod` until it succeeds (a refused ADD leaves nothing, as
/// the runtime's retries rely on); panics after `limit`.
fn poll_run(node: &CriNode, pod: &Value, limit: Duration) -> Sandbox {
    let start = Instant::now();
    loop {
        match node.run_pod(pod) {
            Ok(s) => return s,
            Err(e) if start.elapsed() < limit => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{}: not served within {limit:?}: {e}", name_of(pod)),
        }
    }
}

/// Done-when 4: ipamd without --tor takes its ToR from its Node's label;
/// without the label it runs, STATUS says not ready with the `kubectl
/// label node` command, and labelling the node fixes it without a restart.
#[test]
fn kube_tor_comes_from_the_node_label_and_status_says_how_to_set_it() {
    let node = CriNode::new(Options {
        kube: Some(Kube {
            label_node: false,
            ..Kube::default()
        }),
        ..Options::default()
    });
    let fix = format!("kubectl label node {} {NODE_TOR_LABEL}=", node.id);
    let status = node.moor_status();
    assert_eq!(
        status.err_code("STATUS of an unlabelled node"),
        u64::from(cni_code::NOT_AVAILABLE)
    );
    assert!(status.message().contains(&fix), "{}", status.message());

    pool(&node, "api", POD_NAMESPACE, "api", 2, &[]);
    let pod = node.create_pod(deployment_pod(POD_NAMESPACE, "api", "7d9f8c6b5"));
    let before = node.ip_list();
    let err = node
        .run_pod(&pod)
        .expect_err("a sandbox started on a node without a ToR");
    assert!(err.message().contains(&fix), "{err}");
    assert_eq!(node.ip_list(), before);

    node.label_node(NODE_TOR_LABEL, Some(moor_e2e::containerd::TOR));
    let start = Instant::now();
    wait_for(
        "STATUS ready after the node was labelled",
        Duration::from_secs(10),
        || node.moor_status().code == 0,
    );
    eprintln!("STATUS ready {:?} after the label", start.elapsed());
    let s = run_ok(&node, &pod);
    assert_eq!(pool_of(&node, s.ip), "api");
    assert!(
        (node.range.0..=node.range.1).contains(&s.ip),
        "{} is not in ToR {}'s range",
        s.ip,
        moor_e2e::containerd::TOR
    );
    node.stop_and_remove(&s.id);
    let left = node.leftovers();
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
    node.assert_api_requests_granted();
}

/// Done-when 5: a failed ADD (pool full) becomes an Event on the pod with
/// moor's message; 50 more failures of it are aggregated into a handful of
/// writes. ipamd writes an Event's count back every 2 s here (default 30 s)
/// so the test sees the write-back.
#[test]
fn kube_failed_add_posts_an_event_and_retries_are_aggregated() {
    const INTERVAL: u64 = 2;
    let node = CriNode::new(Options {
        kube: Some(Kube {
            event_interval_seconds: Some(INTERVAL),
            ..Kube::default()
        }),
        ..Options::default()
    });
    let api = node.api();
    pool(&node, "tiny", POD_NAMESPACE, "tiny", 1, &[]);
    let first = node.create_pod(statefulset_pod(POD_NAMESPACE, "tiny", 0));
    let s = run_ok(&node, &first);
    let pod = node.create_pod(statefulset_pod(POD_NAMESPACE, "tiny", 1));
    api.clear_requests();
    let err = node
        .run_pod(&pod)
        .expect_err("a second pod in a pool of one");
    wait_for("an Event on tiny-1", Duration::from_secs(10), || {
        !events_of(&node, "tiny-1").is_empty()
    });
    let ev = events_of(&node, "tiny-1").remove(0);
    eprintln!("the Event: {ev}");
    let message = ev["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("pool tiny"), "{ev}");
    assert!(
        err.message().contains(&message),
        "RunPodSandbox's error does not carry the Event's message:\n{err}\n{message}"
    );
    assert_eq!(ev["reason"], "MoorPoolFull", "{ev}");
    assert_eq!(ev["type"], "Warning", "{ev}");
    assert_eq!(ev["involvedObject"]["kind"], "Pod", "{ev}");
    assert_eq!(ev["involvedObject"]["namespace"], POD_NAMESPACE, "{ev}");
    assert_eq!(ev["involvedObject"]["uid"], uid_of(&pod), "{ev}");
    assert_eq!(ev["source"]["host"], node.id.as_str(), "{ev}");

    let start = Instant::now();
    for i in 0..50 {
        let r = node.moor_add(&pod, &container_id());
        assert_eq!(
            r.err_code(&format!("retry {i}")),
            u64::from(cni_code::POOL_FULL)
        );
        if i == 0 {
            // The Event's message is moor's, as the runtime gets it.
            assert_eq!(r.json["details"].as_str(), Some(message.as_str()));
        }
    }
    let retries = start.elapsed();
    // The last count is written back within an interval or two.
    wait_for(
        "the Event's count written back as 51",
        Duration::from_secs(4 * INTERVAL + 5),
        || {
            events_of(&node, "tiny-1")
                .first()
                .map(|e| e["count"].clone())
                == Some(51.into())
        },
    );
    std::thread::sleep(Duration::from_secs(INTERVAL + 1));
    let writes = event_writes(&api.requests());
    eprintln!(
        "51 failed ADDs of tiny-1 (50 in {retries:?}): {writes} Event writes, {} Event(s)",
        events_of(&node, "tiny-1").len()
    );
    assert_eq!(events_of(&node, "tiny-1").len(), 1, "one Event per failure");
    assert!(writes <= 5, "51 failures cost {writes} API writes");

    node.stop_and_remove(&s.id);
    let left = node.leftovers();
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
    node.assert_api_requests_granted();
}

/// Done-when 6: deploy/'s ClusterRole grants exactly what ipamd asks the API
/// for. One node runs every path that needs a verb: the watches (list,
/// watch of pods, namespaces, nodes), a pod the cache lacks (get pod), a
/// CronJob's Job pod (get job), a failed ADD and its repeat (create, patch
/// event). The other tests check that what their ipamd sent is granted.
#[test]
fn kube_rbac_grants_exactly_what_ipamd_asks_for() {
    let node = CriNode::new(Options {
        kube: Some(Kube {
            event_interval_seconds: Some(1),
            ..Kube::default()
        }),
        ..Options::default()
    });
    let api = node.api();
    pool(&node, "nightly", POD_NAMESPACE, "nightly", 2, &[]);
    pool(&node, "db", POD_NAMESPACE, "db", 2, &[]);

    // A CronJob's Job's pod: its workload is the CronJob (one GET of the
    // Job says so).
    let job = api.create(cronjob_job(POD_NAMESPACE, "nightly", 1_700_000_040));
    let jp = node.create_pod(job_pod(&job));
    let s = run_ok(&node, &jp);
    assert_eq!(pool_of(&node, s.ip), "nightly");

    // A uid the cache lacks: one GET of the pod.
    let mut stale = node.create_pod(statefulset_pod(POD_NAMESPACE, "db", 0));
    stale["metadata"]["uid"] = new_uid().into();
    let r = node.moor_add(&stale, &container_id());
    assert_eq!(
        r.err_code("stale uid"),
        u64::from(cni_code::TRY_AGAIN_LATER)
    );

    // A pod with no pool fails again and again: the Event is created,
    // then its count patched.
    let lost = node.create_pod(bare_pod(POD_NAMESPACE, "lost"));
    wait_for(
        "an Event created and patched",
        Duration::from_secs(15),
        || {
            let r = node.moor_add(&lost, &container_id());
            assert_eq!(r.err_code("no pool"), u64::from(cni_code::NO_POOL));
            let reqs = api.requests();
            ["create", "patch"]
                .iter()
                .all(|v| reqs.iter().any(|r| r.resource == "events" && r.verb == *v))
        },
    );

    node.stop_and_remove(&s.id);
    let used = node.assert_api_requests_granted();
    let granted = cluster_role_grants();
    let unused: Vec<String> = granted.difference(&used).map(|g| g.to_string()).collect();
    assert!(
        unused.is_empty(),
        "deploy/'s ClusterRole grants what ipamd never asked for: {}\n(used: {})",
        unused.join(", "),
        used.iter()
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let left = node.leftovers();
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
}
