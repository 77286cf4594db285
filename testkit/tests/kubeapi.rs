//! The fake API server driven by the real client: kube-rs 5 with
//! k8s-openapi, through a kubeconfig naming `http://127.0.0.1:PORT`.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference, Pod};
use kube::api::{
    Api, ListParams, Patch, PatchParams, PostParams, VersionMatch, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, Config, ResourceExt};
use moor_testkit::kubeapi::objects::{self, bare_pod, deployment_pod, statefulset_pod};
use moor_testkit::kubeapi::{FakeApi, Resource};
use moor_testkit::TempDir;
use serde_json::json;
use std::time::{Duration, Instant};

async fn client(api: &FakeApi) -> Client {
    Client::try_from(config(api).await).expect("client")
}

async fn config(api: &FakeApi) -> Config {
    let dir = TempDir::new("kubeapi");
    let kubeconfig =
        Kubeconfig::read_from(api.write_kubeconfig(dir.path())).expect("kubeconfig parses");
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config from kubeconfig")
}

/// Polls `cond` until it holds; panics with `what` after `within`.
async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn names(store: &reflector::Store<Pod>) -> Vec<String> {
    let mut names: Vec<String> = store.state().iter().map(|p| p.name_any()).collect();
    names.sort();
    names
}

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The next item of a stream; panics after 5 s rather than hang.
async fn next<S: futures::Stream<Item = Result<T, E>> + Unpin, T, E: std::fmt::Debug>(
    stream: &mut S,
) -> Option<T> {
    tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .expect("an event within 5 s")
        .expect("a stream item, not an error")
}

/// Counts requests with `verb` since the log was cleared.
fn count(api: &FakeApi, verb: &str) -> usize {
    api.requests().iter().filter(|r| r.verb == verb).count()
}

#[tokio::test]
async fn reflector_of_one_node_follows_changes_410s_and_an_outage() {
    let api = FakeApi::builder()
        .bookmark_interval(Duration::from_millis(200))
        .start();
    api.create(objects::namespace("apps"));
    api.create(statefulset_pod("apps", "db", 0).node("n1"));
    let web = api.create(deployment_pod("apps", "web", "7d9f8c6b5").node("n1"));
    api.create(objects::daemonset_pod("apps", "agent").node("n2"));
    api.create(bare_pod("apps", "other-node").node("n2"));
    api.create(bare_pod("apps", "unscheduled"));
    let web = web["metadata"]["name"].as_str().unwrap().to_string();

    let pods: Api<Pod> = Api::all(client(&api).await);
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().fields("spec.nodeName=n1");
    let stream = reflector(writer, watcher(pods, config)).default_backoff();
    tokio::spawn(stream.for_each(|_| async {}));
    store.wait_until_ready().await.unwrap();
    assert_eq!(names(&store), ["db-0".to_string(), web.clone()]);

    // Creations, changes and deletions on n1 arrive; n2's do not.
    api.create(bare_pod("apps", "late").node("n1"));
    api.create(bare_pod("apps", "elsewhere").node("n2"));
    api.modify(Resource::Pods, "apps", "db-0", |p| {
        p["metadata"]["labels"]["seen"] = "yes".into()
    });
    api.delete(Resource::Pods, "apps", &web);
    // The scheduler binds a pending pod: it starts matching, arrives ADDED.
    api.modify(Resource::Pods, "apps", "unscheduled", |p| {
        p["spec"]["nodeName"] = "n1".into()
    });
    let want = ["db-0", "late", "unscheduled"];
    eventually("n1's changes in the cache", Duration::from_secs(5), || {
        names(&store) == want
    })
    .await;
    let db = store
        .state()
        .into_iter()
        .find(|p| p.name_any() == "db-0")
        .unwrap();
    assert_eq!(db.labels().get("seen").map(String::as_str), Some("yes"));

    // A synced cache costs no request but the open watch.
    assert!(api.wait_open_watches(1, Duration::from_secs(2)));
    api.clear_requests();
    api.create(bare_pod("apps", "quiet").node("n1"));
    eventually("quiet", Duration::from_secs(5), || {
        names(&store).contains(&"quiet".into())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(api.requests(), [], "a synced watch sends no requests");

    // Outage: connections refused, the open watch reset; the cache keeps
    // serving what it had. Back on the same port with its history, the
    // watcher resumes from its resourceVersion: no relist.
    api.clear_requests();
    api.stop();
    let refused = std::net::TcpStream::connect(("127.0.0.1", api.port())).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    api.create(bare_pod("apps", "during-outage").node("n1"));
    api.delete(Resource::Pods, "apps", "late");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        names(&store).contains(&"late".into()),
        "cache survives the outage"
    );
    api.restart();
    let want = ["db-0", "during-outage", "quiet", "unscheduled"];
    eventually("caught up after restart", Duration::from_secs(10), || {
        names(&store) == want
    })
    .await;
    assert_eq!(
        count(&api, "list"),
        0,
        "resumed, not relisted: {:?}",
        api.requests()
    );

    // An API server restart: its watch cache starts at the newest
    // resourceVersion, so the watcher's older one gets 410 and it relists,
    // seeing what changed meanwhile.
    api.clear_requests();
    api.stop();
    api.create(bare_pod("apps", "after-restart").node("n1"));
    api.delete(Resource::Pods, "apps", "db-0");
    api.compact();
    api.restart();
    let want = ["after-restart", "during-outage", "quiet", "unscheduled"];
    eventually("relist after 410", Duration::from_secs(10), || {
        names(&store) == want
    })
    .await;
    assert_eq!(count(&api, "list"), 1, "one relist: {:?}", api.requests());
    let list = api
        .requests()
        .into_iter()
        .find(|r| r.verb == "list")
        .unwrap();
    assert!(
        list.query.contains("fieldSelector=spec.nodeName%3Dn1"),
        "{list:?}"
    );

    // A forced 410 on the next watch: another relist.
    assert!(api.wait_open_watches(1, Duration::from_secs(5)));
    api.clear_requests();
    api.expire_next_watches(1);
    api.end_watches();
    eventually("second relist", Duration::from_secs(5), || {
        count(&api, "list") == 1
    })
    .await;
}

#[tokio::test]
async fn paginated_lists_are_consistent_snapshots_and_expire() {
    let api = FakeApi::start();
    api.create(objects::namespace("p"));
    for n in 0..7 {
        api.create(bare_pod("p", &format!("pod-{n}")).node("n1"));
    }
    let pods: Api<Pod> = Api::namespaced(client(&api).await, "p");

    let first = pods.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(first.items.len(), 3);
    assert_eq!(first.metadata.remaining_item_count, Some(4));
    let snapshot_rv = first.metadata.resource_version.clone().unwrap();
    // A pod created between pages is not in this list: one snapshot.
    api.create(bare_pod("p", "pod-late").node("n1"));
    let mut seen: Vec<String> = first.items.iter().map(|p| p.name_any()).collect();
    let mut token = first.metadata.continue_.clone();
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = pods
            .list(&ListParams::default().limit(3).continue_token(&t))
            .await
            .unwrap();
        assert_eq!(
            page.metadata.resource_version.as_deref(),
            Some(snapshot_rv.as_str())
        );
        seen.extend(page.items.iter().map(|p| p.name_any()));
        token = page.metadata.continue_;
    }
    let want: Vec<String> = (0..7).map(|n| format!("pod-{n}")).collect();
    assert_eq!(seen, want);
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        8
    );

    // An exact list at the old resourceVersion rebuilds the old state.
    let old = pods
        .list(
            &ListParams::default()
                .at(&snapshot_rv)
                .matching(VersionMatch::Exact),
        )
        .await
        .unwrap();
    assert_eq!(old.items.len(), 7);

    // A watcher paging 2 at a time sees all 8.
    let (store, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(pods.clone(), watcher::Config::default().page_size(2)),
    );
    tokio::spawn(stream.default_backoff().for_each(|_| async {}));
    store.wait_until_ready().await.unwrap();
    assert_eq!(store.state().len(), 8);
    // 3 pages, 1 whole list, 1 exact list, 4 pages of 2.
    assert_eq!(count(&api, "list"), 3 + 1 + 1 + 4, "{:?}", api.requests());

    // Compaction expires a continue token with the server's 410.
    let page = pods.list(&ListParams::default().limit(3)).await.unwrap();
    api.create(bare_pod("p", "pod-later").node("n1"));
    api.compact();
    let token = page.metadata.continue_.unwrap();
    let e = api_error(
        pods.list(&ListParams::default().limit(3).continue_token(&token))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
    assert!(
        e.message
            .starts_with("The provided continue parameter is too old"),
        "{e:?}"
    );
    let e = api_error(
        pods.list(
            &ListParams::default()
                .at(&snapshot_rv)
                .matching(VersionMatch::Exact),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
}

#[tokio::test]
async fn bookmarks_streaming_lists_and_metadata_watches() {
    let api = FakeApi::builder()
        .bookmark_interval(Duration::from_millis(100))
        .start();
    api.create(objects::namespace("b"));
    for n in 0..3 {
        api.create(statefulset_pod("b", "set", n).node("n1"));
    }
    let pods: Api<Pod> = Api::namespaced(client(&api).await, "b");

    // Bookmarks carry the newest resourceVersion.
    let rv = api.resource_version().to_string();
    let mut events = pods
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let started = Instant::now();
    match next(&mut events).await {
        Some(WatchEvent::Bookmark(b)) => assert_eq!(b.metadata.resource_version, rv),
        other => panic!("expected a bookmark, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    // Without allowWatchBookmarks there are none: the next event is a change.
    let mut plain = pods
        .watch(&WatchParams::default().disable_bookmarks(), &rv)
        .await
        .unwrap()
        .boxed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.create(bare_pod("b", "new").node("n1"));
    match next(&mut plain).await {
        Some(WatchEvent::Added(p)) => assert_eq!(p.name_any(), "new"),
        other => panic!("expected ADDED, got {other:?}"),
    }

    // Streaming lists: ADDED events, then the initial-events-end bookmark.
    let mut stream = watcher(pods.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut initial = Vec::new();
    loop {
        match next(&mut stream).await.unwrap() {
            watcher::Event::Init => {}
            watcher::Event::InitApply(p) => initial.push(p.name_any()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    initial.sort();
    assert_eq!(initial, ["new", "set-0", "set-1", "set-2"]);
    let streaming = api
        .requests()
        .into_iter()
        .filter(|r| r.query.contains("sendInitialEvents=true"));
    assert_eq!(streaming.count(), 1);
    assert_eq!(count(&api, "list"), 0, "streaming lists need no LIST");

    // A metadata watcher (kube 5: an Api of PartialObjectMeta) gets
    // PartialObjectMetadata with the owner.
    let metadata: Api<PartialObjectMeta<Pod>> = Api::namespaced(client(&api).await, "b");
    let mut meta = watcher(metadata, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut owners = Vec::new();
    while owners.len() < 3 {
        if let watcher::Event::InitApply(p) = next(&mut meta).await.unwrap() {
            if let Some(o) = p.owner_references().first() {
                owners.push((o.kind.clone(), o.name.clone(), o.controller));
            }
        }
    }
    assert!(owners
        .iter()
        .all(|o| *o == ("StatefulSet".into(), "set".into(), Some(true))));
}

#[tokio::test]
async fn label_selectors_filter_lists_and_turn_watches_into_deletions() {
    let api = FakeApi::start();
    api.create(objects::namespace("l"));
    for (name, app, tier) in [
        ("a", "web", "front"),
        ("b", "db", "back"),
        ("c", "web", "cache"),
        ("d", "x", "front"),
    ] {
        api.create(bare_pod("l", name).label("app", app).label("tier", tier));
    }
    let pods: Api<Pod> = Api::namespaced(client(&api).await, "l");
    let list = pods
        .list(&ListParams::default().labels("app in (web,db),tier!=cache"))
        .await
        .unwrap();
    let got: Vec<String> = list.items.iter().map(|p| p.name_any()).collect();
    assert_eq!(got, ["a", "b"]);
    let got = pods
        .list(&ListParams::default().labels("!tier"))
        .await
        .unwrap();
    assert!(got.items.is_empty());
    let e = api_error(
        pods.list(&ListParams::default().labels("app in web"))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 400);

    let rv = api.resource_version().to_string();
    let mut events = pods
        .watch(&WatchParams::default().labels("app=web"), &rv)
        .await
        .unwrap()
        .boxed();
    api.modify(Resource::Pods, "l", "a", |p| {
        p["metadata"]["labels"]["app"] = "db".into()
    });
    api.modify(Resource::Pods, "l", "d", |p| {
        p["metadata"]["labels"]["tier"] = "y".into()
    });
    api.modify(Resource::Pods, "l", "a", |p| {
        p["metadata"]["labels"]["app"] = "web".into()
    });
    let mut seen = Vec::new();
    for _ in 0..2 {
        match next(&mut events).await.unwrap() {
            WatchEvent::Deleted(p) => {
                seen.push(("DELETED", p.name_any(), p.labels()["app"].clone()))
            }
            WatchEvent::Added(p) => seen.push(("ADDED", p.name_any(), p.labels()["app"].clone())),
            other => panic!("unexpected {other:?}"),
        }
    }
    // DELETED carries the last matching state.
    assert_eq!(
        seen,
        [
            ("DELETED", "a".into(), "web".into()),
            ("ADDED", "a".into(), "web".into())
        ]
    );
}

#[tokio::test]
async fn refusals_carry_the_api_servers_status() {
    let api = FakeApi::start();
    let c = client(&api).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");

    let e = api_error(
        pods.list(&ListParams::default().fields("spec.foo=x"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.reason.as_str(), e.message.as_str()),
        (400, "BadRequest", "field label not supported: spec.foo")
    );
    let params = WatchParams::default().fields("spec.foo=x");
    let Err(e) = pods.watch(&params, "0").await else {
        panic!("a watch with an unsupported field selector opened")
    };
    let e = api_error(e);
    assert_eq!(e.message, "field label not supported: spec.foo");

    let e = api_error(pods.get("nope").await.unwrap_err());
    assert_eq!(
        (e.code, e.reason.as_str(), e.message.as_str()),
        (404, "NotFound", "pods \"nope\" not found")
    );
    api.create(bare_pod("default", "here"));
    let body: Pod = serde_json::from_value(bare_pod("default", "here").build()).unwrap();
    let e = api_error(
        pods.create(&PostParams::default(), &body)
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));

    let apply = Patch::Apply(json!({"metadata": {"labels": {"a": "b"}}}));
    let e = api_error(
        pods.patch("here", &PatchParams::apply("t"), &apply)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 415);
    let smp = Patch::Strategic(json!({"spec": {"containers": [{"name": "app", "image": "x"}]}}));
    let e = api_error(
        pods.patch("here", &PatchParams::default(), &smp)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 400);
    assert!(e.message.contains("/spec/containers"), "{e:?}");

    let e = api_error(
        c.request_text(
            hyper::Request::get("/apis/apps/v1/namespaces/default/controllerrevisions")
                .body(vec![])
                .unwrap(),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    let e = api_error(
        c.request_text(
            hyper::Request::delete("/api/v1/namespaces/default/pods")
                .body(vec![])
                .unwrap(),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 405);

    // A watch from a resourceVersion older than the history: ERROR 410.
    api.compact();
    let mut events = pods
        .watch(&WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    match next(&mut events).await {
        Some(WatchEvent::Error(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (410, "Expired"));
            assert!(
                s.message.starts_with("too old resource version: 1 ("),
                "{s:?}"
            );
        }
        other => panic!("expected ERROR 410, got {other:?}"),
    }
    assert!(
        next(&mut events).await.is_none(),
        "the stream ends after a 410"
    );
}

#[tokio::test]
async fn events_and_jobs_and_the_request_log() {
    let api = FakeApi::start();
    api.create(objects::namespace("apps"));
    let job = api.create(objects::cronjob_job("apps", "nightly", 1_700_000_040));
    let pod = api.create(objects::job_pod(&job).node("n1"));
    let c = client(&api).await;
    api.clear_requests();

    // core/v1: POST, then PATCH the count as kubelet's aggregation does.
    let events: Api<CoreEvent> = Api::namespaced(c.clone(), "apps");
    let event: CoreEvent = serde_json::from_value(json!({
        "metadata": {"generateName": "moor-"},
        "involvedObject": {"kind": "Pod", "namespace": "apps", "name": pod["metadata"]["name"],
                           "uid": pod["metadata"]["uid"]},
        "reason": "MoorPoolFull", "message": "pool web is full", "type": "Warning", "count": 1,
        "source": {"component": "moor-ipamd", "host": "n1"},
    }))
    .unwrap();
    let created = events.create(&PostParams::default(), &event).await.unwrap();
    let name = created.name_any();
    assert!(name.starts_with("moor-") && name.len() == 10, "{name}");
    let patch = Patch::Merge(json!({"count": 2, "message": "pool web is still full"}));
    let patched = events
        .patch(&name, &PatchParams::default(), &patch)
        .await
        .unwrap();
    assert_eq!(patched.count, Some(2));
    assert_eq!(patched.metadata.uid, created.metadata.uid);
    assert_ne!(
        patched.metadata.resource_version,
        created.metadata.resource_version
    );
    let read = events.get(&name).await.unwrap();
    assert_eq!(read.message.as_deref(), Some("pool web is still full"));
    let by_reason = events
        .list(&ListParams::default().fields("reason=MoorPoolFull"))
        .await
        .unwrap();
    assert_eq!(by_reason.items.len(), 1);

    // events.k8s.io/v1 through kube-runtime's Recorder: create, then patch.
    let recorder = Recorder::new(
        c.clone(),
        Reporter {
            controller: "moor-ipamd".into(),
            instance: Some("n1".into()),
        },
    );
    let reference = ObjectReference {
        kind: Some("Pod".into()),
        namespace: Some("apps".into()),
        name: pod["metadata"]["name"].as_str().map(String::from),
        uid: pod["metadata"]["uid"].as_str().map(String::from),
        api_version: Some("v1".into()),
        ..Default::default()
    };
    let ev = Event {
        type_: EventType::Warning,
        reason: "MoorPoolFull".into(),
        note: Some("full".into()),
        action: "Allocate".into(),
        secondary: None,
    };
    recorder.publish(&ev, &reference).await.unwrap();
    recorder.publish(&ev, &reference).await.unwrap();
    let recorded = api.objects(Resource::EventsV1);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0]["series"]["count"], 2);

    // A Job pod's owner Job names its CronJob.
    let jobs: Api<Job> = Api::namespaced(c.clone(), "apps");
    let owner = &pod["metadata"]["ownerReferences"][0];
    let got = jobs.get(owner["name"].as_str().unwrap()).await.unwrap();
    assert_eq!(got.metadata.uid.as_deref(), owner["uid"].as_str());
    let cron = &got.owner_references()[0];
    assert_eq!(
        (cron.kind.as_str(), cron.name.as_str(), cron.controller),
        ("CronJob", "nightly", Some(true))
    );

    let log: Vec<(String, String, String, Option<String>)> = api
        .requests()
        .into_iter()
        .map(|r| (r.verb, r.api_group, r.resource, r.namespace))
        .collect();
    let apps = Some("apps".to_string());
    let want = [
        ("create", "", "events"),
        ("patch", "", "events"),
        ("get", "", "events"),
        ("list", "", "events"),
        ("create", "events.k8s.io", "events"),
        ("patch", "events.k8s.io", "events"),
        ("get", "batch", "jobs"),
    ]
    .map(|(v, g, r)| (v.to_string(), g.to_string(), r.to_string(), apps.clone()));
    assert_eq!(log, want);
}

#[tokio::test]
async fn leases_take_turns_by_resource_version_and_workloads_are_served() {
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    let api = FakeApi::start();
    let client = client(&api).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let mut lease = Lease::default();
    lease.metadata.name = Some("moor-controller".into());
    lease.spec = Some(LeaseSpec {
        holder_identity: Some("a".into()),
        lease_duration_seconds: Some(15),
        lease_transitions: Some(0),
        ..Default::default()
    });
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let taken = api_error(
        leases
            .create(&PostParams::default(), &lease)
            .await
            .unwrap_err(),
    );
    assert_eq!((taken.code, taken.reason.as_str()), (409, "AlreadyExists"));

    // Two candidates read the same version; the first PUT wins, the second
    // gets the real server's 409 Conflict.
    let mut by_b = created.clone();
    by_b.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let mut by_c = created.clone();
    by_c.spec.as_mut().unwrap().holder_identity = Some("c".into());
    let won = leases
        .replace("moor-controller", &PostParams::default(), &by_b)
        .await
        .unwrap();
    assert_ne!(
        won.metadata.resource_version,
        created.metadata.resource_version
    );
    let lost = api_error(
        leases
            .replace("moor-controller", &PostParams::default(), &by_c)
            .await
            .unwrap_err(),
    );
    assert_eq!((lost.code, lost.reason.as_str()), (409, "Conflict"));
    assert!(
        lost.message.contains("leases.coordination.k8s.io"),
        "{lost:?}"
    );
    let now = leases.get("moor-controller").await.unwrap();
    assert_eq!(now.spec.unwrap().holder_identity.as_deref(), Some("b"));

    let mut bad = won.clone();
    bad.spec.as_mut().unwrap().lease_duration_seconds = Some(0);
    let invalid = api_error(
        leases
            .replace("moor-controller", &PostParams::default(), &bad)
            .await
            .unwrap_err(),
    );
    assert_eq!(invalid.code, 422, "{invalid:?}");
    assert!(
        invalid.message.contains("spec.leaseDurationSeconds"),
        "{invalid:?}"
    );

    api.create(objects::namespace("shop"));
    api.create(objects::statefulset("shop", "db", 3).annotation("moor.io/pool-size", "5"));
    api.create(objects::deployment("shop", "web", 2));
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "shop");
    let db = sets.get("db").await.unwrap();
    assert_eq!(db.spec.replicas, Some(3));
    assert_eq!(
        db.metadata.uid.as_deref(),
        Some(objects::owner_uid("StatefulSet", "shop", "db").as_str())
    );
    let deployments: Api<PartialObjectMeta<Deployment>> = Api::all(client);
    let listed = deployments
        .list_metadata(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert!(api
        .requests()
        .iter()
        .any(|r| r.api_group == "coordination.k8s.io" && r.verb == "update"));
}

#[tokio::test]
async fn evictions_honour_budgets_and_deletes_collect_dependents() {
    use k8s_openapi::api::apps::v1::{DaemonSet, ReplicaSet, StatefulSet};
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use kube::api::{DeleteParams, EvictParams};
    let api = FakeApi::start();
    // kube's client retries a 429 up to 15 times with backoff by default:
    // ask once, as `ipamctl ip evict --delete-pod` does.
    let mut config = config(&api).await;
    config.default_retry = false;
    let client = Client::try_from(config).expect("client");
    api.create(objects::namespace("ns"));
    api.create(objects::statefulset("ns", "db", 3));
    for i in 0..3 {
        api.create(statefulset_pod("ns", "db", i).node("n1").phase("Running"));
    }
    api.create(objects::pod_disruption_budget("ns", "db", "db", 1));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ns");

    // The budget allows one disruption: the first eviction spends it.
    pods.evict("db-0", &EvictParams::default())
        .await
        .expect("first eviction");
    assert!(
        api.get(Resource::Pods, "ns", "db-0").is_none(),
        "evicted pod is deleted"
    );
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "ns");
    let pdb = pdbs.get("db").await.unwrap();
    assert_eq!(pdb.status.as_ref().unwrap().disruptions_allowed, Some(0));
    // The second is refused with 429 and changes nothing.
    let e = api_error(
        pods.evict("db-1", &EvictParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.reason.as_str()),
        (429, "TooManyRequests"),
        "{e:?}"
    );
    assert!(e.message.contains("disruption budget"), "{}", e.message);
    assert!(api.get(Resource::Pods, "ns", "db-1").is_some());
    // A pod that is not running yet is evicted whatever the budget says.
    api.modify(Resource::Pods, "ns", "db-1", |p| {
        p["status"]["phase"] = "Pending".into()
    });
    pods.evict("db-1", &EvictParams::default())
        .await
        .expect("pending pod evicted");
    let e = api_error(
        pods.evict("nope", &EvictParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 404);
    let evictions = api
        .requests()
        .into_iter()
        .filter(|r| r.subresource == "eviction" && r.verb == "create" && r.resource == "pods")
        .count();
    assert_eq!(evictions, 4, "the authorizer sees create on pods/eviction");

    // Orphaning delete: the pod stays, its ownerReference goes.
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "ns");
    sets.delete("db", &DeleteParams::orphan()).await.unwrap();
    let left = pods.get("db-2").await.expect("orphaned pod lives");
    assert!(left.metadata.owner_references.is_none(), "{left:?}");

    // A background delete takes the dependents with it, a ConfigMap too.
    api.create(objects::statefulset("ns", "web", 1));
    api.create(statefulset_pod("ns", "web", 0).node("n1"));
    let owner = api.get(Resource::StatefulSets, "ns", "web").unwrap();
    let cm = objects::config_map("ns", "moor-pool-web", &[("ips", "10.0.0.1\n")]).build();
    let mut cm = cm;
    cm["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "StatefulSet",
        "name": "web", "uid": owner["metadata"]["uid"]}]);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "ns");
    cms.create(&PostParams::default(), &serde_json::from_value(cm).unwrap())
        .await
        .unwrap();
    sets.delete("web", &DeleteParams::background())
        .await
        .unwrap();
    assert!(api.get(Resource::Pods, "ns", "web-0").is_none());
    assert!(cms.get_opt("moor-pool-web").await.unwrap().is_none());

    // DaemonSets and ReplicaSets are served.
    api.create(objects::daemonset("ns", "agent"));
    api.create(objects::replicaset("ns", "rs", 2));
    let ds: Api<DaemonSet> = Api::namespaced(client.clone(), "ns");
    let rs: Api<ReplicaSet> = Api::namespaced(client.clone(), "ns");
    assert_eq!(
        ds.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    assert_eq!(rs.get("rs").await.unwrap().spec.replicas, Some(2));
}
