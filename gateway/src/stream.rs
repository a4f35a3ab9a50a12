//! A connection that may or may not be wrapped in TLS, and its borrowed read and write halves.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A client or upstream connection.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
    /// Transient state while the TCP stream is handed to the TLS handshake; all I/O fails.
    Detached,
}

impl Stream {
    /// Upgrades a plain stream to TLS as a server; the stream is `Detached` if the handshake fails.
    pub async fn accept_tls(&mut self, acceptor: &tokio_rustls::TlsAcceptor) -> io::Result<()> {
        let Stream::Plain(tcp) = std::mem::replace(self, Stream::Detached) else {
            return Err(io::Error::other(
                "TLS requested on a stream that is not plain TCP",
            ));
        };
        let tls = acceptor.accept(tcp).await?;
        *self = Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls)));
        Ok(())
    }

    /// The client's end-entity certificate, verified in the TLS handshake, if it sent one.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        match self {
            Stream::Tls(s) => match s.as_ref() {
                tokio_rustls::TlsStream::Server(s) => s
                    .get_ref()
                    .1
                    .peer_certificates()?
                    .first()
                    .map(|c| c.as_ref()),
                tokio_rustls::TlsStream::Client(_) => None,
            },
            _ => None,
        }
    }

    /// The certificate (DER) the server presented, on a TLS connection the gateway opened.
    pub fn server_certificate(&self) -> Option<&[u8]> {
        match self {
            Stream::Tls(s) => match s.as_ref() {
                tokio_rustls::TlsStream::Client(s) => s
                    .get_ref()
                    .1
                    .peer_certificates()?
                    .first()
                    .map(|c| c.as_ref()),
                tokio_rustls::TlsStream::Server(_) => None,
            },
            _ => None,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Borrowed halves, so both directions of a session can run in one task. Plain TCP splits
    /// for free; TLS goes through tokio's split, which locks per call.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
            Stream::Detached => (ReadHalf::Detached, WriteHalf::Detached),
        }
    }
}

pub enum ReadHalf<'a> {
    Plain(tokio::net::tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut tokio_rustls::TlsStream<TcpStream>>),
    Detached,
}

pub enum WriteHalf<'a> {
    Plain(tokio::net::tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut tokio_rustls::TlsStream<TcpStream>>),
    Detached,
}

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "stream is detached")
}

macro_rules! delegate_read {
    ($ty:ty) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Detached => Poll::Ready(Err(detached())),
                }
            }
        }
    };
}

macro_rules! delegate_write {
    ($ty:ty) => {
        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
                    Self::Detached => Poll::Ready(Err(detached())),
                }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_flush(cx),
                    Self::Tls(s) => Pin::new(s).poll_flush(cx),
                    Self::Detached => Poll::Ready(Err(detached())),
                }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Detached => Poll::Ready(Err(detached())),
                }
            }
        }
    };
}

delegate_read!(Stream);
delegate_write!(Stream);
delegate_read!(ReadHalf<'_>);
delegate_write!(WriteHalf<'_>);
