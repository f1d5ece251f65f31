//! Platform tests: the simulated node (`deployctl-simnode`) against the real control plane
//! of the shared cluster. Each test works in its own namespace and waits for conditions by
//! polling with a deadline; on timeout it says what it saw last.
//!
//! Covered: a Deployment of the demo app rolls out (`kubectl rollout status`), Endpoints list
//! the pod IPs and HTTP reaches the pods; PVC data survives a pod's replacement; Jobs finish
//! with their exit codes; a failing readiness probe keeps a pod unready; unknown images
//! report `ErrImagePull`/`ImagePullBackOff`; crash loops back off; a failing liveness probe
//! restarts the container; volumes and the environment reach the process; pods reach each
//! other and the API server in-cluster; deleting a pod stops its processes and removes its veth.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use deployctl_harness::{apply_yaml, require_sim_node, shared, wait_for, SharedEnv, TestNamespace};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Endpoints, Event, Pod};
use kube::api::{Api, DeleteParams, ListParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Poll interval of every wait below (not a fixed sleep: each wait has a deadline).
const FIELD_MANAGER: &str = "platform-test";

/// A test's namespace and client.
struct Ctx {
    env: &'static SharedEnv,
    ns: TestNamespace,
    client: kube::Client,
}

impl Ctx {
    async fn new(prefix: &str) -> Option<Self> {
        let env = shared();
        require_sim_node!(env, None);
        let ns = env.namespace(prefix).await;
        let client = env.client().await;
        Some(Self { env, ns, client })
    }

    fn ns(&self) -> &str {
        self.ns.name()
    }

    async fn apply(&self, yaml: &str) {
        apply_yaml(
            &self.client,
            yaml,
            "platform test",
            FIELD_MANAGER,
            self.ns(),
        )
        .await
        .unwrap_or_else(|e| panic!("applying manifests: {e}\n{yaml}"));
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    async fn pod(&self, name: &str) -> Result<Pod, String> {
        self.pods()
            .get_opt(name)
            .await
            .map_err(|e| format!("reading pod {name}: {e}"))?
            .ok_or_else(|| format!("pod {name} does not exist"))
    }

    /// Names of the pods matching `selector`.
    async fn pods_with(&self, selector: &str) -> Result<Vec<Pod>, String> {
        self.pods()
            .list(&ListParams::default().labels(selector))
            .await
            .map(|l| l.items)
            .map_err(|e| format!("listing pods {selector}: {e}"))
    }

    /// Reasons of the core/v1 events about `pod`.
    async fn event_reasons(&self, pod: &str) -> Vec<String> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), self.ns());
        api.list(&ListParams::default().fields(&format!("involvedObject.name={pod}")))
            .await
            .map(|l| l.items.into_iter().filter_map(|e| e.reason).collect())
            .unwrap_or_default()
    }
}

/// A one-line summary of a pod for failure messages.
fn summary(pod: &Pod) -> String {
    let status = pod.status.clone().unwrap_or_default();
    format!(
        "pod {} phase={:?} ip={:?} containers={} init={}",
        pod.metadata.name.as_deref().unwrap_or("?"),
        status.phase,
        status.pod_ip,
        serde_json::to_string(&status.container_statuses).unwrap_or_default(),
        serde_json::to_string(&status.init_container_statuses).unwrap_or_default()
    )
}

fn container(pod: &Pod, index: usize) -> Option<ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .get(index)
        .cloned()
}

fn condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

fn phase(pod: &Pod) -> Option<String> {
    pod.status.as_ref()?.phase.clone()
}

fn waiting_reason(pod: &Pod) -> Option<String> {
    container(pod, 0)?.state?.waiting?.reason
}

fn pod_ip(pod: &Pod) -> Option<Ipv4Addr> {
    pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()
}

/// Waits until `name` has phase `want` and returns it.
async fn wait_phase(ctx: &Ctx, name: &str, want: &str, timeout: Duration) -> Pod {
    wait_for(&format!("pod {name} to be {want}"), timeout, || async {
        let pod = ctx.pod(name).await?;
        if phase(&pod).as_deref() == Some(want) {
            Ok(pod)
        } else {
            Err(summary(&pod))
        }
    })
    .await
}

/// `GET path` over plain HTTP/1.0 to a pod IP; returns the status code and body.
async fn http_get(ip: Ipv4Addr, port: u16, path: &str) -> Result<(u16, String), String> {
    // Traffic may only go to pods of the simulated node (or loopback).
    assert!(
        ip.octets()[0] == 10 && ip.octets()[1] == 244,
        "{ip} is not a pod IP"
    );
    let io = async {
        let mut stream = tokio::net::TcpStream::connect((ip, port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| format!("GET http://{ip}:{port}{path} timed out"))?
        .map_err(|e| format!("GET http://{ip}:{port}{path}: {e}"))?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

#[tokio::test]
async fn deployment_rolls_out_gets_endpoints_and_serves_http() {
    let Some(ctx) = Ctx::new("rollout").await else {
        return;
    };
    let started = Instant::now();
    ctx.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: demo}}
  template:
    metadata: {labels: {app: demo}}
    spec:
      containers:
      - name: app
        image: deployctl.dev/demo-app:v1
        ports: [{name: http, containerPort: 8080, protocol: TCP}]
        startupProbe: {tcpSocket: {port: http}, periodSeconds: 1, failureThreshold: 30}
        readinessProbe: {httpGet: {path: /readyz, port: http}, periodSeconds: 1}
        livenessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 5}
---
apiVersion: v1
kind: Service
metadata: {name: demo}
spec:
  selector: {app: demo}
  ports: [{name: http, port: 80, targetPort: http, protocol: TCP}]
"#,
    )
    .await;
    let output = tokio::process::Command::new(deployctl_harness::kubectl_binary())
        .arg("--kubeconfig")
        .arg(ctx.env.kubeconfig_path())
        .args([
            "-n",
            ctx.ns(),
            "rollout",
            "status",
            "deployment/demo",
            "--timeout=120s",
        ])
        .output()
        .await
        .expect("kubectl runs");
    let pods = ctx.pods_with("app=demo").await.unwrap_or_default();
    assert!(
        output.status.success(),
        "kubectl rollout status: {}\nstdout: {}\nstderr: {}\npods: {:#?}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        pods.iter().map(summary).collect::<Vec<_>>()
    );
    eprintln!(
        "rollout of 2 demo-app replicas took {:?}",
        started.elapsed()
    );

    let ips: BTreeSet<Ipv4Addr> = pods.iter().filter_map(pod_ip).collect();
    assert_eq!(ips.len(), 2, "two distinct pod IPs: {ips:?}");
    for ip in &ips {
        assert!(!ip.is_loopback(), "{ip}");
        assert_eq!(&ip.octets()[..2], &[10, 244], "{ip} in 10.244.0.0/16");
    }

    let endpoints: Api<Endpoints> = Api::namespaced(ctx.client.clone(), ctx.ns());
    wait_for(
        "Endpoints to list both pod IPs",
        Duration::from_secs(30),
        || async {
            let ep = endpoints
                .get_opt("demo")
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no Endpoints yet")?;
            let listed: BTreeSet<Ipv4Addr> = ep
                .subsets
                .iter()
                .flatten()
                .flat_map(|s| s.addresses.iter().flatten())
                .filter_map(|a| a.ip.parse().ok())
                .collect();
            if listed == ips {
                Ok(())
            } else {
                Err(format!("{listed:?}, want {ips:?}"))
            }
        },
    )
    .await;

    for ip in &ips {
        let (code, body) = http_get(*ip, 8080, "/healthz")
            .await
            .unwrap_or_else(|e| panic!("HTTP to pod {ip}: {e}"));
        assert_eq!(code, 200, "GET /healthz on {ip}: {body}");
    }
}

#[tokio::test]
async fn pvc_data_survives_pod_replacement() {
    let Some(ctx) = Ctx::new("pvc").await else {
        return;
    };
    // Each pod records who saw the first writer's file, then stays ready; its preStop hook
    // leaves a mark when it is deleted.
    ctx.apply(
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: writer}
spec:
  replicas: 1
  selector: {matchLabels: {app: writer}}
  template:
    metadata: {labels: {app: writer}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: app
        image: deployctl.dev/demo-app:v1
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        command: ["/bin/sh", "-c"]
        args:
        - |
          if [ -f /data/first ]; then cp /data/first "/data/seen-by-$POD_NAME"; else echo "$POD_NAME" > /data/first; fi
          exec sleep 3600
        readinessProbe: {exec: {command: ["test", "-f", "/data/first"]}, periodSeconds: 1}
        lifecycle:
          preStop: {exec: {command: ["/bin/sh", "-c", "touch /data/stopped-$POD_NAME"]}}
        volumeMounts: [{name: data, mountPath: /data}]
      volumes: [{name: data, persistentVolumeClaim: {claimName: data}}]
"#,
    )
    .await;
    let ready_pod = |exclude: Option<String>| {
        let ctx = &ctx;
        async move {
            let pods = ctx.pods_with("app=writer").await?;
            pods.iter()
                .find(|p| {
                    p.metadata.name != exclude
                        && p.metadata.deletion_timestamp.is_none()
                        && condition(p, "Ready").as_deref() == Some("True")
                })
                .and_then(|p| p.metadata.name.clone())
                .ok_or_else(|| format!("{:?}", pods.iter().map(summary).collect::<Vec<_>>()))
        }
    };
    let first = wait_for(
        "the first writer pod to be ready",
        Duration::from_secs(90),
        || ready_pod(None),
    )
    .await;
    ctx.pods()
        .delete(&first, &DeleteParams::default())
        .await
        .expect("delete the first pod");
    let second = wait_for(
        "a replacement pod to be ready",
        Duration::from_secs(90),
        || ready_pod(Some(first.clone())),
    )
    .await;

    // A checker pod on the same claim: did the replacement see the first pod's file?
    ctx.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: check}}
spec:
  restartPolicy: Never
  containers:
  - name: check
    image: deployctl.dev/demo-app:v1
    terminationMessagePolicy: FallbackToLogsOnError
    command: ["/bin/sh", "-c", "ls -l /data; grep -qx '{first}' '/data/seen-by-{second}' && test -f '/data/stopped-{first}'"]
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes: [{{name: data, persistentVolumeClaim: {{claimName: data}}}}]
"#
    ))
    .await;
    let pod = wait_for(
        "the checker pod to finish",
        Duration::from_secs(60),
        || async {
            let pod = ctx.pod("check").await?;
            match phase(&pod).as_deref() {
                Some("Succeeded" | "Failed") => Ok(pod),
                _ => Err(summary(&pod)),
            }
        },
    )
    .await;
    assert_eq!(
        phase(&pod).as_deref(),
        Some("Succeeded"),
        "replacement {second} did not see {first}'s data (or {first}'s preStop hook did not run): {}",
        summary(&pod)
    );
}

#[tokio::test]
async fn jobs_finish_with_their_exit_codes() {
    let Some(ctx) = Ctx::new("jobs").await else {
        return;
    };
    ctx.apply(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: ok}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: "deployctl.dev/demo-app:v1", command: ["/bin/sh", "-c", "echo done"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: bad}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: "deployctl.dev/demo-app:v1", command: ["/bin/sh", "-c", "exit 3"]}]
"#,
    )
    .await;
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ctx.ns());
    for (name, want) in [("ok", "Complete"), ("bad", "Failed")] {
        wait_for(
            &format!("job {name} to be {want}"),
            Duration::from_secs(90),
            || async {
                let job = jobs.get(name).await.map_err(|e| e.to_string())?;
                let conditions = job.status.and_then(|s| s.conditions).unwrap_or_default();
                if conditions
                    .iter()
                    .any(|c| c.type_ == want && c.status == "True")
                {
                    Ok(())
                } else {
                    Err(format!("conditions {conditions:?}"))
                }
            },
        )
        .await;
    }
    for (name, want_phase, want_code, want_reason) in [
        ("ok", "Succeeded", 0, "Completed"),
        ("bad", "Failed", 3, "Error"),
    ] {
        let pods = ctx
            .pods_with(&format!("job-name={name}"))
            .await
            .expect("job pods");
        let pod = pods
            .first()
            .unwrap_or_else(|| panic!("job {name} has a pod"));
        assert_eq!(phase(pod).as_deref(), Some(want_phase), "{}", summary(pod));
        let terminated = container(pod, 0)
            .and_then(|c| c.state)
            .and_then(|s| s.terminated)
            .unwrap_or_else(|| panic!("terminated state: {}", summary(pod)));
        assert_eq!(terminated.exit_code, want_code, "{}", summary(pod));
        assert_eq!(terminated.reason.as_deref(), Some(want_reason));
    }
}

#[tokio::test]
async fn failing_readiness_probe_keeps_a_pod_unready() {
    let Some(ctx) = Ctx::new("unready").await else {
        return;
    };
    ctx.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: unready, labels: {app: unready}}
spec:
  containers:
  - name: app
    image: deployctl.dev/demo-app:v1
    command: ["/bin/sh", "-c", "exec sleep 3600"]
    readinessProbe: {exec: {command: ["/bin/false"]}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Service
metadata: {name: unready}
spec:
  selector: {app: unready}
  ports: [{port: 80, protocol: TCP}]
"#,
    )
    .await;
    wait_phase(&ctx, "unready", "Running", Duration::from_secs(60)).await;
    // The probe has run and failed once an Unhealthy event exists.
    wait_for("an Unhealthy event", Duration::from_secs(30), || async {
        let reasons = ctx.event_reasons("unready").await;
        if reasons.iter().any(|r| r == "Unhealthy") {
            Ok(())
        } else {
            Err(format!("events {reasons:?}"))
        }
    })
    .await;
    let pod = ctx.pod("unready").await.expect("pod");
    assert_eq!(
        condition(&pod, "Ready").as_deref(),
        Some("False"),
        "{}",
        summary(&pod)
    );
    let status = container(&pod, 0).expect("container status");
    assert!(!status.ready, "{}", summary(&pod));
    assert!(
        status.state.and_then(|s| s.running).is_some(),
        "{}",
        summary(&pod)
    );
    let ip = pod_ip(&pod).expect("pod IP").to_string();
    let endpoints: Api<Endpoints> = Api::namespaced(ctx.client.clone(), ctx.ns());
    wait_for(
        "the pod listed as not ready in Endpoints",
        Duration::from_secs(30),
        || async {
            let ep = endpoints
                .get_opt("unready")
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no Endpoints yet")?;
            let subsets = ep.subsets.unwrap_or_default();
            let ready = subsets
                .iter()
                .flat_map(|s| s.addresses.iter().flatten())
                .any(|a| a.ip == ip);
            let not_ready = subsets
                .iter()
                .flat_map(|s| s.not_ready_addresses.iter().flatten())
                .any(|a| a.ip == ip);
            if not_ready && !ready {
                Ok(())
            } else {
                Err(format!("{subsets:?}"))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn unknown_image_reports_pull_errors() {
    let Some(ctx) = Ctx::new("pull").await else {
        return;
    };
    ctx.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: nope}
spec:
  containers: [{name: c, image: "registry.invalid/nope:1.0"}]
"#,
    )
    .await;
    let seen = std::cell::RefCell::new(BTreeSet::new());
    let pod = wait_for("ImagePullBackOff", Duration::from_secs(60), || async {
        let pod = ctx.pod("nope").await?;
        if let Some(reason) = waiting_reason(&pod) {
            seen.borrow_mut().insert(reason.clone());
            // ErrImagePull shows for a moment before each back-off, and comes back at
            // every retry: wait for both rather than race the first one.
            if reason == "ImagePullBackOff" && seen.borrow().contains("ErrImagePull") {
                return Ok(pod);
            }
        }
        Err(summary(&pod))
    })
    .await;
    let seen = seen.into_inner();
    assert!(seen.contains("ErrImagePull"), "reasons seen: {seen:?}");
    assert_eq!(phase(&pod).as_deref(), Some("Pending"));
    let message = container(&pod, 0)
        .and_then(|c| c.state)
        .and_then(|s| s.waiting)
        .and_then(|w| w.message)
        .unwrap_or_default();
    assert!(message.contains("registry.invalid/nope:1.0"), "{message}");
}

#[tokio::test]
async fn crashing_container_backs_off_and_failing_liveness_restarts() {
    let Some(ctx) = Ctx::new("restarts").await else {
        return;
    };
    ctx.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  containers: [{name: c, image: "deployctl.dev/demo-app:v1", command: ["/bin/sh", "-c", "exit 4"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: dead}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: deployctl.dev/demo-app:v1
    command: ["/bin/sh", "-c", "exec sleep 3600"]
    livenessProbe: {exec: {command: ["/bin/false"]}, periodSeconds: 1, failureThreshold: 1}
"#,
    )
    .await;
    wait_for(
        "crash to be in CrashLoopBackOff",
        Duration::from_secs(60),
        || async {
            let pod = ctx.pod("crash").await?;
            let c = container(&pod, 0).ok_or_else(|| summary(&pod))?;
            let last_exit = c.last_state.and_then(|s| s.terminated).map(|t| t.exit_code);
            if waiting_reason(&pod).as_deref() == Some("CrashLoopBackOff")
                && c.restart_count >= 1
                && last_exit == Some(4)
                && phase(&pod).as_deref() == Some("Running")
            {
                Ok(())
            } else {
                Err(summary(&pod))
            }
        },
    )
    .await;
    wait_for(
        "dead to be restarted by its liveness probe",
        Duration::from_secs(60),
        || async {
            let pod = ctx.pod("dead").await?;
            let c = container(&pod, 0).ok_or_else(|| summary(&pod))?;
            if c.restart_count >= 1 && c.last_state.and_then(|s| s.terminated).is_some() {
                Ok(())
            } else {
                Err(summary(&pod))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn volumes_and_environment_reach_the_process() {
    let Some(ctx) = Ctx::new("volumes").await else {
        return;
    };
    ctx.apply(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {MODE: fast, app.conf: "a=1"}
---
apiVersion: v1
kind: Secret
metadata: {name: sec}
stringData: {password: hunter2}
---
apiVersion: v1
kind: Pod
metadata: {name: vols, labels: {tier: test}}
spec:
  restartPolicy: Never
  initContainers:
  - name: init
    image: deployctl.dev/demo-app:v1
    command: ["/bin/sh", "-c", "echo from-init > /work/init.txt"]
    volumeMounts: [{name: scratch, mountPath: /work}]
  containers:
  - name: main
    image: deployctl.dev/demo-app:v2
    workingDir: /work
    terminationMessagePolicy: FallbackToLogsOnError
    envFrom: [{configMapRef: {name: cfg}, prefix: CFG_}]
    env:
    - {name: PW, valueFrom: {secretKeyRef: {name: sec, key: password}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: POD_NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: GREETING, value: "mode-$(CFG_MODE)"}
    command: ["/bin/sh", "-c"]
    args:
    - |
      set -ex
      test "$(pwd)" = /work
      test "$(cat init.txt)" = from-init
      test "$PW" = hunter2
      test "$GREETING" = mode-fast
      test "$SIMNODE_IMAGE" = deployctl.dev/demo-app:v2
      test -n "$POD_IP" && test "$POD_IP" != 127.0.0.1
      test "$(cat /etc/app/app.conf)" = a=1
      test "$(cat /etc/extra/app.conf)" = a=1
      test "$(cat /secret/password)" = hunter2
      grep -q 'tier="test"' /podinfo/labels
      test "$(cat /proj/namespace)" = "$POD_NS"
      test -s /proj/token && test -s /proj/ca.crt
      test -x /image/bin/demo-app
      ! touch /etc/app/new 2>/dev/null
      ! touch /usr/new 2>/dev/null
      test "$(cat /proc/sys/kernel/hostname)" = vols
    volumeMounts:
    - {name: scratch, mountPath: /work}
    - {name: cfg, mountPath: /etc/app}
    - {name: cfg, mountPath: /etc/extra/app.conf, subPath: app.conf}
    - {name: sec, mountPath: /secret}
    - {name: podinfo, mountPath: /podinfo}
    - {name: proj, mountPath: /proj}
  volumes:
  - {name: scratch, emptyDir: {}}
  - {name: cfg, configMap: {name: cfg}}
  - {name: sec, secret: {secretName: sec}}
  - name: podinfo
    downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}
  - name: proj
    projected:
      sources:
      - serviceAccountToken: {path: token, expirationSeconds: 3600}
      - configMap: {name: kube-root-ca.crt, items: [{key: ca.crt, path: ca.crt}]}
      - downwardAPI: {items: [{path: namespace, fieldRef: {fieldPath: metadata.namespace}}]}
"#,
    )
    .await;
    let pod = wait_for("vols to finish", Duration::from_secs(90), || async {
        let pod = ctx.pod("vols").await?;
        match phase(&pod).as_deref() {
            Some("Succeeded" | "Failed") => Ok(pod),
            _ => Err(summary(&pod)),
        }
    })
    .await;
    assert_eq!(
        phase(&pod).as_deref(),
        Some("Succeeded"),
        "{}",
        summary(&pod)
    );
}

#[tokio::test]
async fn pods_reach_each_other_and_the_api_server() {
    let Some(ctx) = Ctx::new("incluster").await else {
        return;
    };
    if !Path::new("/usr/bin/curl").exists() {
        eprintln!("skipped: needs /usr/bin/curl on the host (containers see the host's /usr)");
        return;
    }
    ctx.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: server}
spec:
  containers:
  - name: app
    image: deployctl.dev/demo-app:v1
    readinessProbe: {httpGet: {path: /readyz, port: 8080}, periodSeconds: 1}
"#,
    )
    .await;
    let server = wait_for("server to be ready", Duration::from_secs(60), || async {
        let pod = ctx.pod("server").await?;
        if condition(&pod, "Ready").as_deref() == Some("True") {
            Ok(pod)
        } else {
            Err(summary(&pod))
        }
    })
    .await;
    let server_ip = pod_ip(&server).expect("server IP");
    // Pod to pod goes through the root namespace; TLS to the API server is verified
    // against the cluster CA (the relay on 10.96.0.1 passes TLS through).
    ctx.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: deployctl.dev/demo-app:v1
    terminationMessagePolicy: FallbackToLogsOnError
    command: ["/bin/sh", "-c"]
    args:
    - |
      set -e
      curl -sS --fail -m 10 http://{server_ip}:8080/healthz
      sa=/var/run/secrets/kubernetes.io/serviceaccount
      curl -sS --fail -m 10 --cacert $sa/ca.crt -H "Authorization: Bearer $(cat $sa/token)" \
        "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version"
"#
    ))
    .await;
    let pod = wait_for("client to finish", Duration::from_secs(90), || async {
        let pod = ctx.pod("client").await?;
        match phase(&pod).as_deref() {
            Some("Succeeded" | "Failed") => Ok(pod),
            _ => Err(summary(&pod)),
        }
    })
    .await;
    assert_eq!(
        phase(&pod).as_deref(),
        Some("Succeeded"),
        "{}",
        summary(&pod)
    );
}

/// Host pids whose environment holds `marker` (the container's processes).
fn pids_with_env(marker: &str) -> Vec<u32> {
    let needle = marker.as_bytes();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|var| var == needle))
                .unwrap_or(false)
        })
        .collect()
}

/// The host device routing to `ip` (the pod's host-side veth).
async fn route_device(ip: Ipv4Addr) -> Option<String> {
    let out = tokio::process::Command::new("/usr/sbin/ip")
        .args(["-4", "route", "show", "exact", &format!("{ip}/32")])
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let tokens: Vec<&str> = text.split_whitespace().collect();
    tokens
        .windows(2)
        .find(|w| w[0] == "dev")
        .map(|w| w[1].to_owned())
}

#[tokio::test]
async fn deleting_a_pod_stops_its_processes_and_removes_its_veth() {
    let Some(ctx) = Ctx::new("delete").await else {
        return;
    };
    let marker = format!("PLATFORM_TEST_MARKER={}", ctx.ns());
    let (key, value) = marker.split_once('=').expect("marker");
    let started = Instant::now();
    ctx.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: victim}}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: c
    image: deployctl.dev/demo-app:v1
    env: [{{name: {key}, value: {value}}}]
    command: ["/bin/sh", "-c", "sleep 3600 & exec sleep 3600"]
    readinessProbe: {{exec: {{command: ["true"]}}, periodSeconds: 1}}
"#
    ))
    .await;
    let pod = wait_for("victim to be ready", Duration::from_secs(60), || async {
        let pod = ctx.pod("victim").await?;
        if condition(&pod, "Ready").as_deref() == Some("True") {
            Ok(pod)
        } else {
            Err(summary(&pod))
        }
    })
    .await;
    eprintln!("pod create to Ready took {:?}", started.elapsed());
    let ip = pod_ip(&pod).expect("pod IP");
    let veth = route_device(ip)
        .await
        .unwrap_or_else(|| panic!("no route to pod IP {ip}"));
    assert!(veth.starts_with("dv"), "host veth {veth}");
    let pids = wait_for(
        "the container's processes",
        Duration::from_secs(10),
        || async {
            let pids = pids_with_env(&marker);
            // The unshare wrapper, the init and the two sleeps.
            if pids.len() >= 3 {
                Ok(pids)
            } else {
                Err(format!("pids {pids:?}"))
            }
        },
    )
    .await;

    let deleting = Instant::now();
    ctx.pods()
        .delete("victim", &DeleteParams::default())
        .await
        .expect("delete victim");
    wait_for(
        "victim to be gone from the API",
        Duration::from_secs(60),
        || async {
            match ctx.pods().get_opt("victim").await {
                Ok(None) => Ok(()),
                Ok(Some(pod)) => Err(summary(&pod)),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    eprintln!("pod deletion took {:?}", deleting.elapsed());
    // The node removes the object only after its processes and veth are gone.
    let alive: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        .collect();
    assert!(alive.is_empty(), "processes still alive: {alive:?}");
    assert!(
        pids_with_env(&marker).is_empty(),
        "no process carries the marker"
    );
    assert!(
        !Path::new(&format!("/sys/class/net/{veth}")).exists(),
        "veth {veth} still exists"
    );
    assert_eq!(
        route_device(ip).await.as_deref().filter(|d| *d == veth),
        None
    );
}
