//! Who connects over the Postgres wire protocol: SCRAM-SHA-256 against the catalog's users once
//! any user exists, and until then trusted connections from this machine's loopback address
//! (as admins). Each connection's session is noted with its user and role.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::driver::AuthOutcome;
use pgwire::api::auth::mechanism::AuthMechanismFactory;
use pgwire::api::auth::sasl::scram::{ScramAuth, ScramSecret};
use pgwire::api::auth::{
    protocol_negotiation, save_startup_parameters_to_metadata, AuthDriver, AuthSource,
    DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::{ClientInfo, ConnectionManager, METADATA_APPLICATION_NAME, METADATA_USER};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::catalog::users::{Role, Verifier};
use crate::catalog::Catalog;
use crate::engine::Engine;

/// The startup phase of every connection.
pub struct Startup {
    engine: Arc<Engine>,
    driver: AuthDriver<DefaultServerParameterProvider>,
    scram: ScramAuth,
    /// Refuse connections without TLS.
    require_tls: bool,
}

impl Startup {
    pub fn new(
        engine: Arc<Engine>,
        connections: Arc<ConnectionManager>,
        require_tls: bool,
        tls_chain_pem: Option<&[u8]>,
    ) -> Startup {
        let users = Arc::new(Users {
            catalog: engine.catalog().clone(),
        });
        let mut scram = ScramAuth::new(users);
        // With TLS, SCRAM-SHA-256-PLUS binds the exchange to the server's certificate, so a
        // man in the middle with another certificate cannot relay it (libpq's channel_binding).
        if let Some(pem) = tls_chain_pem {
            if let Err(e) = scram.configure_certificate(pem) {
                tracing::warn!(error = %e, "SCRAM channel binding is off: the certificate was not understood.");
            }
        }
        Startup {
            engine,
            driver: AuthDriver::new(DefaultServerParameterProvider::default())
                .with_connection_manager(connections),
            scram,
            require_tls,
        }
    }

    /// Notes the session in `tributary.sessions` for as long as the connection lasts.
    fn note_session<C: ClientInfo>(&self, client: &mut C, role: Role) {
        let (pid, _) = client.pid_and_secret_key();
        let metadata = client.metadata();
        let setting = |k: &str| metadata.get(k).cloned().unwrap_or_default();
        let guard = self.engine.sessions().connect(
            pid,
            setting(METADATA_USER),
            role,
            setting(METADATA_APPLICATION_NAME),
            client.socket_addr().to_string(),
            client.is_secure(),
        );
        client.session_extensions().insert(guard);
    }
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        code.into(),
        message,
    )))
}

fn password_failed(user: &str) -> PgWireError {
    fatal(
        "28P01",
        format!("password authentication failed for user \"{user}\""),
    )
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        fn user(client: &impl ClientInfo) -> String {
            client
                .metadata()
                .get(METADATA_USER)
                .cloned()
                .unwrap_or_default()
        }
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if self.require_tls && !client.is_secure() {
                    tracing::warn!(peer = %client.socket_addr(), "Refused a connection without TLS.");
                    return Err(fatal(
                        "28000",
                        "this server requires TLS: connect with sslmode=require (or verify-full)"
                            .into(),
                    ));
                }
                if self.engine.catalog().requires_authentication() {
                    self.driver
                        .begin_authentication(client, self.scram.create())
                        .await?;
                } else if client.socket_addr().ip().is_loopback() {
                    self.driver.complete_authentication(client, None).await?;
                    self.note_session(client, Role::Admin);
                } else {
                    tracing::warn!(peer = %client.socket_addr(), "Refused a connection: no users exist, so only loopback connections are trusted.");
                    return Err(fatal(
                        "28000",
                        "no users exist yet, so only connections from this machine's loopback \
                         address are accepted: create a user (CREATE USER ... PASSWORD ...) first"
                            .into(),
                    ));
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                let outcome = self.driver.advance_authentication(client, message).await;
                match outcome {
                    Ok(AuthOutcome::Authenticated { final_message, .. }) => {
                        // The user may have been dropped during the handshake.
                        let name = user(client);
                        let Some(entry) = self.engine.catalog().user(&name) else {
                            return Err(password_failed(&name));
                        };
                        self.driver
                            .complete_authentication(client, final_message)
                            .await?;
                        tracing::info!(user = %name, role = entry.role.as_str(), peer = %client.socket_addr(), "Authenticated.");
                        self.note_session(client, entry.role);
                    }
                    Ok(AuthOutcome::InProgress) => {}
                    Err(e) => {
                        let name = user(client);
                        tracing::warn!(user = %name, peer = %client.socket_addr(), "Authentication failed.");
                        return Err(match e {
                            // PostgreSQL's words, naming the user the client logged in as (the
                            // SCRAM exchange itself carries no name).
                            PgWireError::InvalidPassword(_) => password_failed(&name),
                            e => e,
                        });
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The catalog's users as pgwire's SCRAM mechanism asks for them.
#[derive(Debug)]
struct Users {
    catalog: Arc<Catalog>,
}

#[async_trait]
impl AuthSource for Users {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        // Only verifiers are kept: no password to give.
        Err(PgWireError::InvalidPassword(
            login.user().unwrap_or_default().to_string(),
        ))
    }

    async fn get_scram_secret(&self, login: &LoginInfo) -> PgWireResult<(ScramSecret, Option<()>)> {
        let user = login.user().unwrap_or_default();
        let verifier = self
            .catalog
            .user(user)
            .and_then(|u| Verifier::parse(&u.verifier).ok());
        Ok(match verifier {
            Some(v) => (v.scram_secret(), None),
            // An unknown user goes through the same exchange, against a verifier of a random
            // password, and fails as a wrong password does: names cannot be probed.
            None => (
                Verifier::new(&uuid::Uuid::new_v4().to_string()).scram_secret(),
                None,
            ),
        })
    }
}
