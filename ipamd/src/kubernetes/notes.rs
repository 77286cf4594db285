//! Events that record what the controller did, one per act (a release is
//! done once, so nothing is aggregated, unlike `events`' failed ADDs).
//! Each is about a pod: `kubectl get events -n NS` lists it, and `kubectl
//! describe pod` shows it while the pod exists. A release happens because
//! the pod is gone, so the Event names the pod (and the uid it had) even
//! though the API no longer has it, as kubelet's last Events of a deleted
//! pod do.

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;

use corev1::{Event, EventSource, ObjectReference};
use kube::api::PostParams;
use kube::{Api, Client};
use metav1::{ObjectMeta, Time};

/// Who writes the controller's Events.
pub const COMPONENT: &str = "moor-controller";

/// One Event about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub namespace: String,
    pub pod: String,
    /// Empty when unknown.
    pub uid: String,
    /// `Normal` or `Warning`.
    pub type_: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// Writes `note` as a core/v1 Event from `instance` (the controller
/// replica), stamped `now_unix`.
pub async fn post(
    client: &Client,
    note: &Note,
    instance: &str,
    now_unix: u64,
) -> Result<(), kube::Error> {
    let time = k8s_openapi::jiff::Timestamp::from_second(now_unix as i64)
        .ok()
        .map(Time);
    let prefix: String = note.pod.chars().take(200).collect();
    // As kubelet names them: the object's name, a dot, something unique.
    let unique = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|u| {
            u.trim()
                .chars()
                .filter(|c| *c != '-')
                .take(12)
                .collect::<String>()
        })
        .unwrap_or_else(|_| format!("{now_unix:x}"));
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("{prefix}.moor{unique}")),
            namespace: Some(note.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(note.namespace.clone()),
            name: Some(note.pod.clone()),
            uid: (!note.uid.is_empty()).then(|| note.uid.clone()),
            ..Default::default()
        },
        reason: Some(note.reason.into()),
        message: Some(note.message.clone()),
        type_: Some(note.type_.into()),
        count: Some(1),
        first_timestamp: time.clone(),
        last_timestamp: time,
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: None,
        }),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(instance.into()),
        ..Default::default()
    };
    let api: Api<Event> = Api::namespaced(client.clone(), &note.namespace);
    api.create(&PostParams::default(), &event).await.map(|_| ())
}
