//! Running an in-process HTTP listener for a test.

use std::net::SocketAddr;
use std::thread::JoinHandle;

/// Serves `app` on 127.0.0.1 (a free port) on a thread of its own with its own runtime, so tests
/// that block can use it. The handlers can read the peer's address (`ConnectInfo<SocketAddr>`).
pub fn serve_in_thread(app: axum::Router) -> (SocketAddr, JoinHandle<()>) {
    serve_in_thread_on(app, 0)
}

/// [`serve_in_thread`] on a given port of 127.0.0.1 (0: any free one).
pub fn serve_in_thread_on(app: axum::Router, port: u16) -> (SocketAddr, JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
    });
    (rx.recv().unwrap(), thread)
}
