//! A real S3 server on 127.0.0.1 for the tests: `s3s-fs` (the S3 protocol of the `s3s` crate
//! over real files in a temp folder), run on its own thread and runtime so that it outlives
//! any one test's runtime and serves every client the tests make, ours included. Port 0, one
//! per test: no port races, no state shared between tests.

use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;

/// The bucket every test server holds.
pub(crate) const BUCKET: &str = "uploads";
/// Its credentials (SigV4 is checked: a wrong key is refused as by AWS).
pub(crate) const ACCESS_KEY: &str = "test-access-key";
pub(crate) const SECRET_KEY: &str = "test-secret-key-do-not-log";

/// An s3s-fs server; stopped (its connections with it) on drop.
pub(crate) struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub(crate) endpoint: String,
    /// Its root: the bucket is the folder `BUCKET` in it.
    pub(crate) root: TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3Server {
    pub(crate) fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        // s3s-fs keeps a bucket as a folder of its root.
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();

        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                loop {
                    let socket = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((socket, _)) => socket,
                            Err(_) => continue,
                        },
                        _ = &mut stopped => break,
                    };
                    let service = service.clone();
                    tokio::spawn(async move {
                        let io = hyper_util::rt::TokioIo::new(socket);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    });
                }
            });
            // Dropping the runtime ends the connections still open.
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the S3 server did not start within 20 s");
        Self {
            endpoint: format!("http://{addr}"),
            root,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The object as s3s-fs keeps it on disk.
    pub(crate) fn file(&self, object: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(object)
    }

    /// Multipart uploads open on the server (s3s-fs keeps one `.upload-{id}.json` each;
    /// it has no `ListMultipartUploads`).
    pub(crate) fn open_uploads(&self) -> usize {
        std::fs::read_dir(self.root.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.starts_with(".upload-") && n.ends_with(".json")
            })
            .count()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
