//! What every part of a running node shares: the client, the spawner, configuration, the
//! probe HTTP client, event recording, and per-node network state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Resource;

use crate::image;
use crate::network::NodeNet;
use crate::rootfs::HostLayout;
use crate::spawner::Spawner;
use crate::store::ImageStore;

/// Shared by all tasks of one [`crate::SimNode`].
pub(crate) struct Ctx {
    pub(crate) client: kube::Client,
    pub(crate) spawner: Arc<Spawner>,
    pub(crate) state_dir: PathBuf,
    pub(crate) images: BTreeMap<String, PathBuf>,
    pub(crate) ca_pem: String,
    /// Port of the API relay on `10.96.0.1`.
    pub(crate) api_port: u16,
    pub(crate) layout: HostLayout,
    pub(crate) http: reqwest::Client,
    /// Pulled images (`state_dir/images`).
    pub(crate) store: Arc<ImageStore>,
    image_ids: Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("state_dir", &self.state_dir)
            .field("images", &self.images)
            .field("api_port", &self.api_port)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Ctx {
    pub(crate) fn new(
        client: kube::Client,
        spawner: Arc<Spawner>,
        cfg: crate::NodeConfig,
        api_port: u16,
        http: reqwest::Client,
        store: Arc<ImageStore>,
    ) -> Self {
        Self {
            client,
            spawner,
            state_dir: cfg.state_dir,
            images: cfg.images,
            ca_pem: cfg.ca_pem,
            api_port,
            layout: HostLayout::detect(),
            http,
            store,
            image_ids: Mutex::new(BTreeMap::new()),
        }
    }

    /// `state_dir/pods`.
    pub(crate) fn pods_dir(&self) -> PathBuf {
        self.state_dir.join("pods")
    }

    /// `state_dir/pvs`.
    pub(crate) fn pv_root(&self) -> PathBuf {
        self.state_dir.join("pvs")
    }

    /// The image id reported for `repository`, computed once per node.
    pub(crate) fn image_id(&self, repository: &str, exe: &Path) -> String {
        let mut ids = self.image_ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.entry(repository.to_owned())
            .or_insert_with(|| image::image_id(repository, exe))
            .clone()
    }
}

/// One simulated node: its name, network and event recorder.
pub(crate) struct NodeHandle {
    pub(crate) name: String,
    pub(crate) net: NodeNet,
    recorder: Recorder,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("name", &self.name)
            .field("net", &self.net)
            .finish_non_exhaustive()
    }
}

impl NodeHandle {
    pub(crate) fn new(client: kube::Client, net: NodeNet) -> Self {
        let name = net.node.clone();
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "kubelet".into(),
                instance: Some(name.clone()),
            },
        );
        Self {
            name,
            net,
            recorder,
        }
    }

    /// Records an Event about `pod` in the background (events are best effort, as on a
    /// kubelet).
    pub(crate) fn event(&self, pod: &Pod, warning: bool, reason: &str, note: String) {
        let recorder = self.recorder.clone();
        let reference = pod.object_ref(&());
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            action: action_of(reason, &note),
            note: Some(truncate(note, 1000)),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, "recording an event");
            }
        });
    }
}

/// The event's `action`, which with its reason keys the recorder's aggregation (repeats
/// only count up a series, their note is not kept): the note's fixed part, up to the
/// first quoted name, parenthesis or number, so `Pulled` "already present" and `Pulled`
/// "Successfully pulled" stay two events as on a kubelet, while a repeated back-off (a
/// new delay, or another image tag) is a repeat.
fn action_of(reason: &str, note: &str) -> String {
    let fixed = note
        .split(|c: char| c == '"' || c == '(' || c.is_ascii_digit())
        .next()
        .unwrap_or_default()
        .trim();
    truncate(format!("{reason}: {fixed}"), 128)
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::action_of;

    #[test]
    fn actions_tell_notes_apart_but_not_their_numbers() {
        let pulled = action_of("Pulled", "Successfully pulled image \"a:1\" in 1.2s");
        assert_eq!(pulled, "Pulled: Successfully pulled image");
        assert_ne!(
            pulled,
            action_of(
                "Pulled",
                "Container image \"a:1\" already present on machine"
            )
        );
        assert_eq!(
            action_of("BackOff", "Back-off 10s restarting"),
            action_of("BackOff", "Back-off 20s restarting")
        );
        assert_ne!(
            action_of("Failed", "Error: ErrImagePull"),
            action_of("Failed", "Failed to pull image \"x\": boom")
        );
        assert!(action_of("X", &"y".repeat(300)).len() <= 128);
    }
}
