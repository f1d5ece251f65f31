//! The pod manager: watches the pods bound to each simulated node (field selector
//! `spec.nodeName=<node>`), starts a [`Worker`] per pod and forwards it every change;
//! tells workers when their pod is gone (a delete event, or absent from a re-list after
//! the watch restarted), and on stop waits for every worker to kill its processes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::context::{Ctx, NodeHandle};
use crate::pod::{PodMsg, Worker};

/// How long stopping waits for workers before abandoning them (their processes still die:
/// dropped handles kill, and the spawner thread's end sends parent-death signals).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

struct Entry {
    node: usize,
    tx: mpsc::UnboundedSender<PodMsg>,
}

/// Runs until `stop` turns true, then stops every worker.
pub(crate) async fn run(ctx: Arc<Ctx>, nodes: Vec<Arc<NodeHandle>>, stop: watch::Receiver<bool>) {
    let streams = nodes.iter().enumerate().map(|(i, node)| {
        let api: Api<Pod> = Api::all(ctx.client.clone());
        let config = watcher::Config::default().fields(&format!("spec.nodeName={}", node.name));
        watcher(api, config)
            .default_backoff()
            .map(move |event| (i, event))
            .boxed()
    });
    let mut events = futures::stream::select_all(streams);
    let mut workers: HashMap<String, Entry> = HashMap::new();
    let mut tasks: JoinSet<String> = JoinSet::new();
    // Uids whose worker finished: late events about them must not start a new one.
    let mut finished: HashSet<String> = HashSet::new();
    // Uids listed since the last watch restart, per node.
    let mut listed: Vec<HashSet<String>> = vec![HashSet::new(); nodes.len()];
    let mut stop_rx = stop.clone();
    loop {
        tokio::select! {
            changed = stop_rx.changed() => {
                if changed.is_err() || *stop_rx.borrow() {
                    break;
                }
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(uid) = done {
                    workers.remove(&uid);
                    finished.insert(uid);
                }
            }
            next = events.next() => {
                let Some((node, event)) = next else { break };
                match event {
                    Ok(Event::Apply(pod)) | Ok(Event::InitApply(pod)) => {
                        let Some(uid) = pod.metadata.uid.clone() else { continue };
                        listed[node].insert(uid.clone());
                        if let Some(entry) = workers.get(&uid) {
                            let _ = entry.tx.send(PodMsg::Update(Arc::new(pod)));
                        } else if !finished.contains(&uid) {
                            let (tx, rx) = mpsc::unbounded_channel();
                            let worker = Worker::new(ctx.clone(), nodes[node].clone(), Arc::new(pod));
                            let stop = stop.clone();
                            let task_uid = uid.clone();
                            tasks.spawn(async move {
                                worker.run(rx, stop).await;
                                task_uid
                            });
                            workers.insert(uid, Entry { node, tx });
                        }
                    }
                    Ok(Event::Delete(pod)) => {
                        if let Some(entry) = pod.metadata.uid.as_ref().and_then(|u| workers.get(u)) {
                            let _ = entry.tx.send(PodMsg::Gone);
                        }
                    }
                    Ok(Event::Init) => listed[node].clear(),
                    Ok(Event::InitDone) => {
                        for (uid, entry) in &workers {
                            if entry.node == node && !listed[node].contains(uid) {
                                let _ = entry.tx.send(PodMsg::Gone);
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "pod watch error; retrying"),
                }
            }
        }
    }
    // Workers see `stop` themselves; wait for them to kill their processes.
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(STOP_TIMEOUT, drain).await.is_err() {
        tracing::warn!("pod workers did not stop in time");
        tasks.abort_all();
    }
}
