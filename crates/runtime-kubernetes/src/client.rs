//! The connection to the API server, found as the Go worker finds it: the
//! `kubeconfig` key's file, else the Pod's service account (in-cluster),
//! else `KUBECONFIG`, else `~/.kube/config`. TLS, client certificates,
//! bearer tokens and their refresh (exec plugins, projected service-account
//! tokens that rotate) are kube-rs's.

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Why the worker could not reach or use the Kubernetes API.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read the kubeconfig {path} (backend.kubernetes.kubeconfig): {source}")]
    ReadKubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot use the kubeconfig {path}: {source}")]
    UseKubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes configuration found: not in a Pod with a service account, no KUBECONFIG and no ~/.kube/config \
         ({source}); set backend.kubernetes.kubeconfig or KUBECONFIG"
    )]
    NoConfig {
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("cannot reach the Kubernetes API server at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: kube::Error,
    },
}

/// The client configuration, in the Go worker's order.
pub async fn config(kubeconfig: Option<&str>) -> Result<Config, ConnectError> {
    if let Some(path) = kubeconfig {
        let file = Kubeconfig::read_from(path).map_err(|source| ConnectError::ReadKubeconfig {
            path: path.to_string(),
            source,
        })?;
        return Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .map_err(|source| ConnectError::UseKubeconfig {
                path: path.to_string(),
                source,
            });
    }
    if let Ok(config) = Config::incluster() {
        return Ok(config);
    }
    Config::from_kubeconfig(&KubeConfigOptions::default())
        .await
        .map_err(|source| ConnectError::NoConfig { source })
}

/// A client, and the server's version (which also proves it answers).
pub async fn connect(kubeconfig: Option<&str>) -> Result<(Client, String), ConnectError> {
    let config = config(kubeconfig).await?;
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(ConnectError::Client)?;
    let version = client
        .apiserver_version()
        .await
        .map_err(|source| ConnectError::Unreachable { url, source })?;
    Ok((client, version.git_version))
}
