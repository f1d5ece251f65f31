//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas can run and only
//! one reconciles (and so writes) at a time.
//!
//! Expiry is judged by when *this* replica last saw the Lease change, not by the
//! timestamps in it, so clock skew between nodes cannot make two replicas lead.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Takes and keeps a Lease.
#[derive(Clone, Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl LeaderElector {
    /// An elector for Lease `namespace/name` held as `identity`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            duration: duration.max(Duration::from_secs(1)),
        }
    }

    fn retry_period(&self) -> Duration {
        (self.duration / 5).max(Duration::from_millis(200))
    }

    fn spec(&self, previous: Option<&LeaseSpec>, take: bool) -> LeaseSpec {
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
            acquire_time: if take {
                Some(now())
            } else {
                previous.and_then(|p| p.acquire_time.clone())
            },
            renew_time: Some(now()),
            lease_transitions: Some(if take && previous.is_some() {
                transitions + 1
            } else {
                transitions
            }),
            ..Default::default()
        }
    }

    /// Waits until this replica holds the Lease. Returns false if `shutdown` fired first.
    pub async fn acquire(&self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let mut last_seen: Option<(Option<String>, Option<MicroTime>, Instant)> = None;
        loop {
            if *shutdown.borrow() {
                return false;
            }
            match self.try_acquire(&mut last_seen).await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
                    return true;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.retry_period()) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn try_acquire(
        &self,
        last_seen: &mut Option<(Option<String>, Option<MicroTime>, Instant)>,
    ) -> Result<bool, kube::Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None, true)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.identity.as_str());
        let observed = (holder.clone(), spec.renew_time.clone());
        let changed = last_seen
            .as_ref()
            .is_none_or(|(h, r, _)| (h, r) != (&observed.0, &observed.1));
        if changed {
            *last_seen = Some((observed.0, observed.1, Instant::now()));
        }
        let lease_duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(1) as u64))
            .unwrap_or(self.duration);
        let expired = holder.is_none()
            || last_seen
                .as_ref()
                .is_some_and(|(_, _, at)| !changed && at.elapsed() >= lease_duration);
        if !(mine || expired) {
            return Ok(false);
        }
        let mut updated = lease.clone();
        updated.spec = Some(self.spec(Some(&spec), !mine));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Renews the Lease until `shutdown` fires (returns true) or renewal fails for longer
    /// than two thirds of the lease duration or another replica took it (returns false:
    /// leadership is lost and the caller must stop writing).
    pub async fn keep(&self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let renew_deadline = self.duration * 2 / 3;
        // When the last renewal that succeeded was sent: the Lease is ours until that
        // moment plus its duration, whatever the reply's delay.
        let mut last_ok = Instant::now();
        let mut wait = self.duration / 3;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return true;
            }
            // A request that hangs must not outlive the Lease it is renewing: each try
            // gets only what is left before the renew deadline.
            let left = renew_deadline.saturating_sub(last_ok.elapsed());
            if left.is_zero() {
                tracing::error!(lease = %self.name, "could not renew the Lease in time");
                return false;
            }
            let sent = Instant::now();
            let renewed = tokio::time::timeout(left, self.renew())
                .await
                .unwrap_or_else(|_| Err(kube::Error::Service("renewal timed out".into())));
            match renewed {
                Ok(true) => {
                    last_ok = sent;
                    wait = self.duration / 3;
                }
                Ok(false) => {
                    tracing::error!(lease = %self.name, "another replica holds the Lease");
                    return false;
                }
                Err(e) => {
                    // One failed or slow request must not cost the Lease: try again soon,
                    // several times, before the renew deadline (client-go's retryPeriod).
                    tracing::warn!(error = %e, "renewing the Lease");
                    wait = self.retry_period();
                }
            }
            if last_ok.elapsed() > renew_deadline {
                tracing::error!(lease = %self.name, "could not renew the Lease in time");
                return false;
            }
        }
    }

    async fn renew(&self) -> Result<bool, kube::Error> {
        let mut lease = self.api.get(&self.name).await?;
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        lease.spec = Some(self.spec(Some(&spec), false));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // A conflict means someone wrote the Lease since it was read, perhaps a
            // replica taking it over: not renewed; the next try reads it again.
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up so a standby replica takes over at once instead of waiting for
    /// it to expire.
    pub async fn release(&self) {
        let Ok(mut lease) = self.api.get(&self.name).await else {
            return;
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = Some(now());
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "released the Lease"),
            Err(e) => tracing::warn!(error = %e, "releasing the Lease"),
        }
    }
}
