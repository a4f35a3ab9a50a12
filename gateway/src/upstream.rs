//! Connecting to the upstream PostgreSQL server with the gateway's own credentials.

use crate::auth::scram::{self, ClientExchange};
use crate::config::{ChannelBinding, UpstreamAuth, UpstreamConfig, UpstreamTls};
use crate::protocol::{self, ServerError};
use crate::stream::Stream;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why the gateway could not open an upstream session.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to upstream {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out connecting to upstream {0}")]
    Timeout(String),
    #[error("upstream TLS: {0}")]
    Tls(String),
    #[error("upstream refused the gateway's credentials: {0}")]
    Auth(ServerError),
    #[error("upstream refused the session: {0}")]
    Refused(ServerError),
    #[error("upstream asks for an authentication method pgward does not support (code {0})")]
    UnsupportedAuth(i32),
    #[error("upstream asks for a password but none is configured (upstream.password or PGWARD_UPSTREAM_PASSWORD)")]
    NoPassword,
    #[error("upstream asked for {0} authentication, which upstream.auth_methods does not allow (by default only scram-sha-256); refused before sending any credential. Add \"{0}\" to upstream.auth_methods to accept it")]
    WeakAuth(&'static str),
    #[error(
        "upstream did not offer SCRAM-SHA-256-PLUS, and upstream.channel_binding is \"require\""
    )]
    NoChannelBinding,
    #[error("upstream SCRAM: {0}")]
    Scram(#[from] scram::ScramError),
    #[error("upstream protocol violation: {0}")]
    Protocol(&'static str),
    #[error("upstream refused SET ROLE {role}: {error}")]
    Role { role: String, error: ServerError },
    #[error("upstream connection: {0}")]
    Io(#[from] std::io::Error),
}

/// What the gateway needs to reach the upstream, built once from the config.
#[derive(Clone)]
pub struct UpstreamTarget {
    pub config: UpstreamConfig,
    pub password: Option<String>,
    pub tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
}

impl UpstreamTarget {
    pub fn new(
        config: UpstreamConfig,
        password: Option<String>,
    ) -> Result<Self, crate::tls::TlsError> {
        let tls = match config.tls {
            UpstreamTls::Disable => None,
            UpstreamTls::VerifyFull => {
                let ca = config
                    .ca_cert
                    .as_deref()
                    .ok_or_else(|| crate::tls::TlsError::ServerName(String::new()))?;
                let client = crate::tls::client_config(ca)?;
                let name =
                    crate::tls::server_name(config.server_name.as_deref().unwrap_or(&config.host))?;
                Some((tokio_rustls::TlsConnector::from(client), name))
            }
        };
        Ok(UpstreamTarget {
            config,
            password,
            tls,
        })
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.config.host, self.config.port)
    }

    /// Opens a TCP (and, if configured, TLS) connection, not yet started up.
    pub async fn open(&self) -> Result<Stream, UpstreamError> {
        let addr = self.addr();
        let tcp = tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| UpstreamError::Timeout(addr.clone()))?
            .map_err(|source| UpstreamError::Connect {
                addr: addr.clone(),
                source,
            })?;
        tcp.set_nodelay(true)?;
        let Some((connector, name)) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let mut tcp = tcp;
        let mut req = BytesMut::new();
        protocol::put_ssl_request(&mut req);
        tcp.write_all(&req).await?;
        let answer = tcp.read_u8().await?;
        if answer != b'S' {
            return Err(UpstreamError::Tls(
                "upstream does not accept TLS (answered the SSLRequest with N)".into(),
            ));
        }
        let tls = connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| UpstreamError::Tls(e.to_string()))?;
        Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls))))
    }

    /// How a SCRAM exchange on `stream` is bound to its TLS connection; `plus`: the server
    /// offered SCRAM-SHA-256-PLUS.
    fn binding(&self, stream: &Stream, plus: bool) -> Result<scram::Binding, UpstreamError> {
        let policy = self.config.channel_binding;
        let cert = match (policy, stream.server_certificate()) {
            (ChannelBinding::Disable, _) | (_, None) => None,
            (_, Some(cert)) => Some(cert),
        };
        let binding = match (cert, plus) {
            (Some(cert), true) => scram::certificate_hash(cert)
                .map(scram::Binding::TlsServerEndPoint)
                .ok_or(UpstreamError::Tls(
                    "cannot read the upstream's certificate for channel binding".into(),
                ))?,
            (Some(_), false) => scram::Binding::NotOffered,
            (None, _) => scram::Binding::None,
        };
        if policy == ChannelBinding::Require
            && !matches!(binding, scram::Binding::TlsServerEndPoint(_))
        {
            return Err(UpstreamError::NoChannelBinding);
        }
        Ok(binding)
    }

    /// Connects and logs in; `params` are the client's startup parameters to forward. With a
    /// `role`, the session is `SET ROLE`d to it before anything of the client's runs.
    pub async fn connect(
        &self,
        params: &[(&str, &str)],
        role: Option<&str>,
    ) -> Result<UpstreamSession, UpstreamError> {
        let timeout = self.config.connect_timeout;
        tokio::time::timeout(timeout, async {
            let mut session = self.connect_inner(params).await?;
            if let Some(role) = role {
                session.set_role(role).await?;
            }
            Ok(session)
        })
        .await
        .map_err(|_| UpstreamError::Timeout(self.addr()))?
    }

    async fn connect_inner(
        &self,
        params: &[(&str, &str)],
    ) -> Result<UpstreamSession, UpstreamError> {
        let mut stream = self.open().await?;
        let mut out = BytesMut::with_capacity(256);
        let mut startup: Vec<(&str, &str)> = vec![("user", &self.config.user)];
        startup.extend(params.iter().copied());
        protocol::put_startup(&mut out, &startup);
        stream.write_all(&out).await?;
        out.clear();

        let mut buf = BytesMut::with_capacity(4096);
        let mut scram: Option<ClientExchange> = None;
        let allows = |m: UpstreamAuth| self.config.auth_methods.contains(&m);
        // A password was sent (cleartext or md5): AuthenticationOk is then not trust.
        let mut password_sent = false;
        // Once SCRAM started, the server must prove it knows the password (SASLFinal) before
        // AuthenticationOk counts: otherwise an impostor could skip mutual authentication.
        let mut scram_verified = false;
        let mut session = UpstreamSession {
            stream,
            relay_to_client: BytesMut::new(),
            parameters: Vec::new(),
            backend_key: None,
            txn_status: protocol::TXN_IDLE,
        };
        loop {
            let (tag, body) = read_message(&mut session.stream, &mut buf).await?;
            match tag {
                protocol::tag::AUTHENTICATION => {
                    let mut b = &body[..];
                    let code = protocol::take_i32(&mut b)
                        .ok_or(UpstreamError::Protocol("short authentication message"))?;
                    match code {
                        0 if scram.is_some() && !scram_verified => {
                            return Err(UpstreamError::Protocol(
                                "authentication completed without the server's SCRAM signature",
                            ))
                        }
                        // Logged in without proving anything: only if trust is allowed.
                        0 if scram.is_none() && !password_sent && !allows(UpstreamAuth::Trust) => {
                            return Err(UpstreamError::WeakAuth("trust"));
                        }
                        0 => {}
                        3 if !allows(UpstreamAuth::Password) => {
                            return Err(UpstreamError::WeakAuth("password"));
                        }
                        5 if !allows(UpstreamAuth::Md5) => {
                            return Err(UpstreamError::WeakAuth("md5"));
                        }
                        3 => {
                            let pw = self.password.as_deref().ok_or(UpstreamError::NoPassword)?;
                            protocol::put_message(&mut out, protocol::tag::PASSWORD, |o| {
                                protocol::put_cstr(o, pw)
                            });
                            password_sent = true;
                        }
                        5 => {
                            password_sent = true;
                            let pw = self.password.as_deref().ok_or(UpstreamError::NoPassword)?;
                            let salt: [u8; 4] = b
                                .get(..4)
                                .and_then(|s| s.try_into().ok())
                                .ok_or(UpstreamError::Protocol("short md5 salt"))?;
                            let hashed = scram::md5_password(&self.config.user, pw, &salt);
                            protocol::put_message(&mut out, protocol::tag::PASSWORD, |o| {
                                protocol::put_cstr(o, &hashed)
                            });
                        }
                        10 if !allows(UpstreamAuth::ScramSha256) => {
                            return Err(UpstreamError::WeakAuth("scram-sha-256"));
                        }
                        10 => {
                            let mut mechs = b;
                            let (mut offered, mut plus) = (false, false);
                            while let Some(m) = protocol::take_cstr(&mut mechs) {
                                if m.is_empty() {
                                    break;
                                }
                                offered |= m == scram::MECHANISM.as_bytes();
                                plus |= m == scram::MECHANISM_PLUS.as_bytes();
                            }
                            let binding = self.binding(&session.stream, plus)?;
                            if !offered && !matches!(binding, scram::Binding::TlsServerEndPoint(_))
                            {
                                return Err(UpstreamError::UnsupportedAuth(code));
                            }
                            let pw = self.password.as_deref().ok_or(UpstreamError::NoPassword)?;
                            let ex = ClientExchange::new(pw, binding)?;
                            tracing::debug!(mechanism = ex.mechanism(), "upstream SASL login");
                            let first = ex.client_first();
                            protocol::put_message(&mut out, protocol::tag::PASSWORD, |o| {
                                protocol::put_cstr(o, ex.mechanism());
                                o.extend_from_slice(&(first.len() as i32).to_be_bytes());
                                o.extend_from_slice(first.as_bytes());
                            });
                            scram = Some(ex);
                        }
                        11 => {
                            let ex = scram
                                .as_mut()
                                .ok_or(UpstreamError::Protocol("SASL continue without SASL"))?;
                            let fin = ex.client_final(b)?;
                            protocol::put_message(&mut out, protocol::tag::PASSWORD, |o| {
                                o.extend_from_slice(fin.as_bytes())
                            });
                        }
                        12 => {
                            let ex = scram
                                .as_ref()
                                .ok_or(UpstreamError::Protocol("SASL final without SASL"))?;
                            ex.verify_server_final(b)?;
                            scram_verified = true;
                        }
                        other => return Err(UpstreamError::UnsupportedAuth(other)),
                    }
                    if !out.is_empty() {
                        session.stream.write_all(&out).await?;
                        out.clear();
                    }
                }
                protocol::tag::ERROR_RESPONSE => {
                    let e = protocol::parse_error_body(&body);
                    return Err(if e.code.starts_with("28") {
                        UpstreamError::Auth(e)
                    } else {
                        UpstreamError::Refused(e)
                    });
                }
                protocol::tag::PARAMETER_STATUS => {
                    let mut b = &body[..];
                    if let (Some(k), Some(v)) =
                        (protocol::take_cstr(&mut b), protocol::take_cstr(&mut b))
                    {
                        session.parameters.push((
                            String::from_utf8_lossy(k).into_owned(),
                            String::from_utf8_lossy(v).into_owned(),
                        ));
                    }
                    protocol::put_message(
                        &mut session.relay_to_client,
                        protocol::tag::PARAMETER_STATUS,
                        |o| o.extend_from_slice(&body),
                    );
                }
                protocol::tag::NOTICE_RESPONSE => {
                    protocol::put_message(
                        &mut session.relay_to_client,
                        protocol::tag::NOTICE_RESPONSE,
                        |o| o.extend_from_slice(&body),
                    );
                }
                protocol::tag::BACKEND_KEY_DATA => {
                    let mut b = &body[..];
                    let pid = protocol::take_i32(&mut b)
                        .ok_or(UpstreamError::Protocol("short BackendKeyData"))?;
                    let secret = protocol::take_i32(&mut b)
                        .ok_or(UpstreamError::Protocol("short BackendKeyData"))?;
                    session.backend_key = Some((pid, secret));
                }
                protocol::tag::READY_FOR_QUERY => {
                    session.txn_status = body.first().copied().unwrap_or(protocol::TXN_IDLE);
                    return Ok(session);
                }
                _ => return Err(UpstreamError::Protocol("unexpected message during startup")),
            }
        }
    }

    /// Sends a CancelRequest for an upstream backend on a new connection.
    pub async fn cancel(&self, pid: i32, secret: i32) -> Result<(), UpstreamError> {
        let mut stream = self.open().await?;
        let mut out = BytesMut::new();
        protocol::put_cancel_request(&mut out, pid, secret);
        stream.write_all(&out).await?;
        stream.flush().await?;
        // The server closes the connection once it has read the request.
        let mut sink = [0u8; 16];
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(1), stream.read(&mut sink)).await;
        Ok(())
    }
}

/// An upstream connection that finished startup.
pub struct UpstreamSession {
    pub stream: Stream,
    /// ParameterStatus and NoticeResponse frames to pass on to the client, in order.
    pub relay_to_client: BytesMut,
    pub parameters: Vec<(String, String)>,
    pub backend_key: Option<(i32, i32)>,
    pub txn_status: u8,
}

impl UpstreamSession {
    /// Runs `SET ROLE` for the identity's mapped role; ParameterStatus changes it causes (such
    /// as `is_superuser`) are passed on to the client with the others.
    async fn set_role(&mut self, role: &str) -> Result<(), UpstreamError> {
        let mut out = BytesMut::with_capacity(64);
        let sql = format!("SET ROLE {}", quote_ident(role));
        protocol::put_message(&mut out, protocol::tag::QUERY, |o| {
            protocol::put_cstr(o, &sql)
        });
        self.stream.write_all(&out).await?;
        let mut buf = BytesMut::with_capacity(1024);
        let mut failed = None;
        loop {
            let (tag, body) = read_message(&mut self.stream, &mut buf).await?;
            match tag {
                protocol::tag::ERROR_RESPONSE => failed = Some(protocol::parse_error_body(&body)),
                protocol::tag::PARAMETER_STATUS => {
                    let mut b = &body[..];
                    if let (Some(k), Some(v)) =
                        (protocol::take_cstr(&mut b), protocol::take_cstr(&mut b))
                    {
                        let (k, v) = (
                            String::from_utf8_lossy(k).into_owned(),
                            String::from_utf8_lossy(v).into_owned(),
                        );
                        match self.parameters.iter_mut().find(|(n, _)| *n == k) {
                            Some(p) => p.1 = v,
                            None => self.parameters.push((k, v)),
                        }
                    }
                    protocol::put_message(
                        &mut self.relay_to_client,
                        protocol::tag::PARAMETER_STATUS,
                        |o| o.extend_from_slice(&body),
                    );
                }
                protocol::tag::NOTICE_RESPONSE | protocol::tag::COMMAND_COMPLETE => {}
                protocol::tag::READY_FOR_QUERY => {
                    self.txn_status = body.first().copied().unwrap_or(protocol::TXN_IDLE);
                    return match failed {
                        Some(e) => Err(UpstreamError::Role {
                            role: role.to_owned(),
                            error: e,
                        }),
                        None => Ok(()),
                    };
                }
                _ => return Err(UpstreamError::Protocol("unexpected reply to SET ROLE")),
            }
        }
    }
}

/// Quotes an SQL identifier: always in double quotes, inner quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Reads one typed message during startup (messages here are small; 1 MiB is plenty).
async fn read_message(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<(u8, BytesMut), UpstreamError> {
    loop {
        match protocol::frame_header(buf, 1 << 20) {
            Err(_) => return Err(UpstreamError::Protocol("invalid message length")),
            Ok(Some(h)) if buf.len() >= h.frame_len => {
                let mut frame = buf.split_to(h.frame_len);
                frame.advance(5);
                return Ok((h.tag, frame));
            }
            _ => {}
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(UpstreamError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}
