//! Follows channels over WebSocket and prints every frame, one JSON object per line.
//!
//! ```sh
//! cargo run -q --example follow -- "ws://localhost:8080/v1?token=$TOKEN" app_abc/room-1 [more channels…]
//! ```

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::{connect_async, tungstenite::Message};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: follow <ws-url-with-credential> <channel>...")?;
    let (mut socket, _) = connect_async(url.as_str()).await?;
    for (n, channel) in args.enumerate() {
        let subscribe = serde_json::json!({"type": "subscribe", "channel": channel, "requestId": format!("sub-{n}")});
        socket.send(Message::text(subscribe.to_string())).await?;
    }
    while let Some(message) = socket.next().await {
        match message? {
            Message::Text(text) => println!("{text}"),
            Message::Close(frame) => {
                println!("closed: {frame:?}");
                break;
            }
            _ => {}
        }
    }
    Ok(())
}
