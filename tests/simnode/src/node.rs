//! Node registration and heartbeats: the `Node` objects (labels, `podCIDR`, capacity,
//! `Ready=True`) and their `Lease`s in `kube-node-lease`, renewed every 10 s, so the
//! node-lifecycle controller keeps the nodes Ready and removes the `not-ready` taint, and
//! the scheduler binds pods to them.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;

use crate::context::NodeHandle;
use crate::error::{Result, SimNodeError};
use crate::quantity::{NODE_CPU, NODE_EPHEMERAL_STORAGE, NODE_MEMORY, NODE_PODS};

/// Namespace of the node leases.
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Lease renewal period (a kubelet's default).
const LEASE_RENEW: Duration = Duration::from_secs(10);
/// Lease duration (a kubelet's default).
const LEASE_SECONDS: i32 = 40;
/// How often the node status is written again (fresh heartbeat times).
const STATUS_EVERY: u32 = 6;
/// Label on every simulated node.
pub(crate) const SIMNODE_LABEL: &str = "deployctl.dev/simnode";

/// The `Node` object to create (without status).
pub(crate) fn node_object(node: &NodeHandle) -> Node {
    let name = &node.name;
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64",
                SIMNODE_LABEL: "true",
            },
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {
            "podCIDR": node.net.cidr(),
            "podCIDRs": [node.net.cidr()],
        },
    }))
    .unwrap_or_default()
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The node's status; `since` is the Ready condition's transition time.
pub(crate) fn node_status(
    node: &NodeHandle,
    since: Timestamp,
    now: Timestamp,
) -> serde_json::Value {
    let resources = json!({
        "cpu": NODE_CPU,
        "memory": NODE_MEMORY,
        "pods": NODE_PODS,
        "ephemeral-storage": NODE_EPHEMERAL_STORAGE,
    });
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now),
            "lastTransitionTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(since),
        })
    };
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "deployctl-simnode is posting ready status"),
        ],
        // No Hostname address: the API server would resolve it through DNS (for exec and
        // logs), and traffic may not leave the machine. Dialling 10.244.N.1 stays local.
        "addresses": [
            {"type": "InternalIP", "address": node.net.node_ip().to_string()},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": format!("simnode-{}", node.name),
            "systemUUID": format!("simnode-{}", node.name),
            "bootID": format!("simnode-{}", std::process::id()),
            "kernelVersion": kernel_version(),
            "osImage": "deployctl simulated node",
            "containerRuntimeVersion": concat!("simnode://", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": "v1.37.2",
            "kubeProxyVersion": "v1.37.2",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    })
}

/// Creates (or takes over) the `Node` object, writes its status and its lease.
pub(crate) async fn register(
    client: &kube::Client,
    node: &NodeHandle,
    since: Timestamp,
) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let desired = node_object(node);
    let cidr = node.net.cidr();
    let existing = api
        .get_opt(&node.name)
        .await
        .map_err(|e| SimNodeError::kube(format!("reading node {}", node.name), e))?;
    let stale_cidr = existing.as_ref().is_some_and(|n| {
        n.spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .is_some_and(|c| c != cidr)
    });
    if stale_cidr {
        // podCIDR is immutable: a node left by an earlier run on another /24 is replaced.
        api.delete(&node.name, &DeleteParams::default())
            .await
            .map_err(|e| SimNodeError::kube(format!("replacing node {}", node.name), e))?;
        wait_node_gone(&api, &node.name).await?;
    }
    if existing.is_none() || stale_cidr {
        api.create(&PostParams::default(), &desired)
            .await
            .map_err(|e| SimNodeError::kube(format!("creating node {}", node.name), e))?;
    } else {
        let patch = json!({"metadata": {"labels": desired.metadata.labels}, "spec": {"unschedulable": null}});
        api.patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| SimNodeError::kube(format!("updating node {}", node.name), e))?;
    }
    write_status(client, node, since).await?;
    renew_lease(client, node).await
}

async fn wait_node_gone(api: &Api<Node>, name: &str) -> Result<()> {
    let waited = Duration::from_secs(30);
    let deadline = tokio::time::Instant::now() + waited;
    loop {
        match api.get_opt(name).await {
            Ok(None) => return Ok(()),
            Ok(Some(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Some(_)) => {
                return Err(SimNodeError::Timeout {
                    what: format!("old node {name} to be deleted"),
                    waited,
                })
            }
            Err(e) => return Err(SimNodeError::kube(format!("reading node {name}"), e)),
        }
    }
}

async fn write_status(client: &kube::Client, node: &NodeHandle, since: Timestamp) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let patch = json!({ "status": node_status(node, since, Timestamp::now()) });
    api.patch_status(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
        .map_err(|e| SimNodeError::kube(format!("writing the status of node {}", node.name), e))
}

async fn renew_lease(client: &kube::Client, node: &NodeHandle) -> Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let spec = LeaseSpec {
        holder_identity: Some(node.name.clone()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        renew_time: Some(MicroTime(Timestamp::now())),
        ..Default::default()
    };
    let patch = json!({ "spec": spec });
    match api
        .patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => {
            return Err(SimNodeError::kube(
                format!("renewing the lease of {}", node.name),
                e,
            ))
        }
    }
    let owner = Api::<Node>::all(client.clone())
        .get(&node.name)
        .await
        .map_err(|e| SimNodeError::kube(format!("reading node {}", node.name), e))?;
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            namespace: Some(LEASE_NAMESPACE.into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: node.name.clone(),
                uid: owner.metadata.uid.unwrap_or_default(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: Some(spec),
    };
    match api.create(&PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(SimNodeError::kube(
            format!("creating the lease of {}", node.name),
            e,
        )),
    }
}

/// Renews every node's lease every 10 s and rewrites their status every minute, until
/// `stop`. Failures are logged and retried at the next tick.
pub(crate) async fn heartbeat(
    client: kube::Client,
    nodes: Vec<Arc<NodeHandle>>,
    since: Timestamp,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(LEASE_RENEW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut count: u32 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        count = count.wrapping_add(1);
        for node in &nodes {
            if let Err(e) = renew_lease(&client, node).await {
                tracing::warn!(node = %node.name, error = %e, "lease renewal failed");
            }
            if count.is_multiple_of(STATUS_EVERY) {
                if let Err(e) = write_status(&client, node, since).await {
                    tracing::warn!(node = %node.name, error = %e, "node status update failed");
                }
            }
        }
    }
}
