use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::*;

fn pod(status: Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
}

fn waiting(reason: &str, message: &str) -> Value {
    json!({"name": "app", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
           "state": {"waiting": {"reason": reason, "message": message}}})
}

#[test]
fn healthy_and_starting_pods_are_fine() {
    assert_eq!(diagnose_pod(&pod(json!({"phase": "Pending"}))), None);
    let creating =
        pod(json!({"phase": "Pending", "containerStatuses": [waiting("ContainerCreating", "")]}));
    assert_eq!(diagnose_pod(&creating), None);
    let running = pod(json!({"phase": "Running", "containerStatuses": [
        {"name": "app", "ready": true, "restartCount": 0, "image": "i", "imageID": "", "state": {"running": {}}}]}));
    assert_eq!(diagnose_pod(&running), None);
}

#[test]
fn image_problems_are_stuck() {
    for reason in [
        "ErrImageNeverPull",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
    ] {
        let p = pod(
            json!({"phase": "Pending", "containerStatuses": [waiting(reason, "Container image \"x:1\" is not present")]}),
        );
        let problem = diagnose_pod(&p).unwrap();
        assert_eq!(
            (problem.container.as_deref(), problem.reason.as_str()),
            (Some("app"), reason)
        );
        assert!(problem.to_string().contains("is not present"), "{problem}");
    }
}

#[test]
fn crash_loop_reports_the_last_exit() {
    let mut s = waiting(
        "CrashLoopBackOff",
        "back-off 10s restarting failed container",
    );
    s["lastState"] =
        json!({"terminated": {"exitCode": 3, "reason": "Error", "message": "bad config\n"}});
    let problem =
        diagnose_pod(&pod(json!({"phase": "Running", "containerStatuses": [s]}))).unwrap();
    assert_eq!(
        problem.to_string(),
        "container app: CrashLoopBackOff: last exit code 3: Error: bad config"
    );
}

#[test]
fn unschedulable_reports_the_scheduler() {
    let p = pod(
        json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
        "reason": "Unschedulable", "message": "0/1 nodes are available: 1 Insufficient cpu."}]}),
    );
    let problem = diagnose_pod(&p).unwrap();
    assert_eq!(
        problem.to_string(),
        "Unschedulable: 0/1 nodes are available: 1 Insufficient cpu."
    );
}

#[test]
fn failed_init_container_is_stuck() {
    let init = json!({"name": "tpr-agent-init", "ready": false, "restartCount": 1, "image": "i", "imageID": "",
        "state": {"terminated": {"exitCode": 2, "reason": "Error", "message": "iptables: Permission denied"}}});
    let problem = diagnose_pod(&pod(
        json!({"phase": "Pending", "initContainerStatuses": [init],
        "containerStatuses": [waiting("PodInitializing", "")]}),
    ))
    .unwrap();
    assert_eq!(problem.container.as_deref(), Some("tpr-agent-init"));
    assert!(
        problem
            .message
            .contains("code 2: iptables: Permission denied"),
        "{problem}"
    );
    let done = json!({"name": "tpr-agent-init", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
        "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}});
    assert_eq!(
        diagnose_pod(&pod(
            json!({"phase": "Running", "initContainerStatuses": [done]})
        )),
        None
    );
}

#[test]
fn failed_pod_is_stuck() {
    let p = pod(json!({"phase": "Failed", "reason": "Evicted", "message": "low on memory"}));
    assert_eq!(
        diagnose_pod(&p).unwrap().to_string(),
        "Evicted: low on memory"
    );
}
