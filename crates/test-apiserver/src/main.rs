//! `oz-test-apiserver --state-dir DIR [--port N] [--docker-host URL]
//! [--watch-window N] [--bookmark-interval-ms N] [--pull-backoff-ms N]`:
//! the test Kubernetes API server as a process (prints `listening URL`;
//! the kubeconfig is DIR/kubeconfig).

use std::time::Duration;

fn usage(problem: &str) -> ! {
    eprintln!("oz-test-apiserver: {problem}\nusage: oz-test-apiserver --state-dir DIR [--port N] [--docker-host URL] [--watch-window N] [--bookmark-interval-ms N] [--pull-backoff-ms N] [--rbac-role ROLE.yaml [--rbac-namespace NS]] [--feature-gates ImageVolume=true]");
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut state_dir = None;
    let mut rest = Vec::new();
    while let Some(a) = args.next() {
        let v = args
            .next()
            .unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--state-dir" => state_dir = Some(v),
            _ => rest.push((a, v)),
        }
    }
    let Some(dir) = state_dir else {
        usage("--state-dir is required")
    };
    let mut config = oz_test_apiserver::Config::new(dir.into());
    for (a, v) in rest {
        let n = || {
            v.parse::<u64>()
                .unwrap_or_else(|_| usage(&format!("{a}: {v:?} is not a number")))
        };
        match a.as_str() {
            "--port" => config.port = n() as u16,
            "--docker-host" => config.docker_host = v.clone(),
            "--watch-window" => config.watch_window = n() as usize,
            "--bookmark-interval-ms" => config.bookmark_interval = Duration::from_millis(n()),
            "--pull-backoff-ms" => config.pull_backoff = Duration::from_millis(n()),
            "--rbac-role" => config.rbac_role = Some(v.clone().into()),
            "--rbac-namespace" => config.rbac_namespace = v.clone(),
            "--feature-gates" => match v.as_str() {
                "ImageVolume=true" => oz_test_apiserver::enable_image_volumes(),
                "ImageVolume=false" => {}
                _ => usage(&format!(
                    "--feature-gates: only ImageVolume=true|false is known, not {v:?}"
                )),
            },
            _ => usage(&format!("unknown flag {a}")),
        }
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = rt.block_on(oz_test_apiserver::serve(config)) {
        eprintln!("oz-test-apiserver: {e}");
        std::process::exit(1);
    }
}
