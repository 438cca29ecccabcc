//! One Postgres-wire client connection: TLS negotiation, the message loop, and the limits a
//! connection is held to (the size of one message, the time to start up, the number of clients).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use pgwire::api::{ClientInfo, ErrorHandler, PgWireConnectionState, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::PgWireFrontendMessage;
use pgwire::tokio::server::{
    negotiate_tls, process_error, process_message, PgWireMessageServerCodec,
};
use pgwire::tokio::TlsAcceptor;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, FramedParts};

use super::frames::{FrameLimit, GSSENC_REQUEST, SSL_REQUEST};

/// A client has this long to finish TLS and authentication, as in PostgreSQL
/// (`authentication_timeout`, one minute).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves one client until it leaves, breaks the protocol or sends a message larger than
/// `max_message` bytes (refused with 54000 before more than the header is read).
pub async fn serve_connection<H: PgWireServerHandlers>(
    socket: TcpStream,
    tls: Option<TlsAcceptor>,
    handlers: Arc<H>,
    max_message: usize,
) -> io::Result<()> {
    let startup_deadline = tokio::time::sleep(STARTUP_TIMEOUT);
    tokio::pin!(startup_deadline);
    let framed = tokio::select! {
        _ = &mut startup_deadline => return Ok(()),
        framed = negotiate_tls(socket, tls) => framed?,
    };
    // A direct TLS handshake with no certificate configured.
    let Some(framed) = framed else {
        return Ok(());
    };
    // The frame limit sees every byte after the negotiation, those already buffered first.
    let mut parts = framed.into_parts();
    let mut limit = FrameLimit::new(parts.io, max_message);
    limit.take_buffered(&mut parts.read_buf);
    let mut limited = FramedParts::new(limit, parts.codec);
    limited.read_buf = parts.read_buf;
    limited.write_buf = parts.write_buf;
    let mut socket = Framed::from_parts(limited);

    let startup = handlers.startup_handler();
    let simple = handlers.simple_query_handler();
    let extended = handlers.extended_query_handler();
    let copy = handlers.copy_handler();
    let cancel = handlers.cancel_handler();
    let errors = handlers.error_handler();
    loop {
        if let Some(refusal) = socket.get_ref().refusal.clone() {
            let code = if refusal.starts_with("invalid") {
                "08P01"
            } else {
                "54000"
            };
            return say_fatal_and_close(&mut socket, code, refusal).await;
        }
        let starting = matches!(
            socket.state(),
            PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        );
        let next = if starting {
            tokio::select! {
                _ = &mut startup_deadline => None,
                next = socket.next() => next,
            }
        } else {
            socket.next().await
        };
        let message = match next {
            Some(Ok(message)) => message,
            // Refused by the frame limit: said above, then closed.
            Some(Err(_)) if socket.get_ref().refusal.is_some() => continue,
            // A message that does not decode: PostgreSQL's protocol violation, then closed.
            Some(Err(PgWireError::IoError(_))) | None => return Ok(()),
            Some(Err(e)) => {
                return say_fatal_and_close(&mut socket, "08P01", format!("invalid message: {e}"))
                    .await
            }
        };
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            return Ok(());
        }
        let extended_query = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => message.is_extended_query(),
        };
        let cancel_request = matches!(message, PgWireFrontendMessage::CancelRequest(_));
        if let Err(mut e) = process_message(
            message,
            &mut socket,
            startup.clone(),
            simple.clone(),
            extended.clone(),
            copy.clone(),
            cancel.clone(),
        )
        .await
        {
            errors.on_error(&socket, &mut e);
            let fatal = e.is_fatal();
            process_error(&mut socket, e, extended_query).await?;
            if fatal {
                return Ok(());
            }
        }
        if cancel_request {
            return Ok(());
        }
    }
}

/// Sends a FATAL error, then closes as a careful server does: the write side first, then what
/// the client still sends read and dropped for a moment, so the error is not lost to a reset
/// sent for unread bytes (a client still writing the rest of a refused message).
async fn say_fatal_and_close<S, C>(
    socket: &mut Framed<FrameLimit<S>, PgWireMessageServerCodec<C>>,
    code: &str,
    message: String,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let error = PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        code.into(),
        message,
    )));
    process_error(socket, error, false).await?;
    let inner = socket.get_mut().inner_mut();
    inner.shutdown().await?;
    let mut dropped = vec![0u8; 64 * 1024];
    let drain = async { while matches!(inner.read(&mut dropped).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    Ok(())
}

/// Refuses a connection past `max_connections` as PostgreSQL does: an encryption request
/// (SSL, GSS) is answered "no", the startup message read (at most 10,000 bytes), then the error
/// sent, which every client shows.
pub async fn refuse(socket: &mut TcpStream) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..3 {
        let mut head = [0u8; 8];
        socket.read_exact(&mut head).await?;
        let len = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if len == 8 && (code == SSL_REQUEST || code == GSSENC_REQUEST) {
            socket.write_all(b"N").await?;
            continue;
        }
        if (8..=10_000).contains(&len) {
            let mut rest = vec![0u8; len as usize - 8];
            socket.read_exact(&mut rest).await?;
        }
        break;
    }
    socket.write_all(&too_many_clients()).await?;
    socket.shutdown().await
}

/// PostgreSQL's refusal of a connection past `max_connections`: an ErrorResponse, sent before
/// the startup (libpq and the drivers read it whatever they sent first).
fn too_many_clients() -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "53300"),
        (b'M', "sorry, too many clients already"),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    message.extend(body);
    message
}
