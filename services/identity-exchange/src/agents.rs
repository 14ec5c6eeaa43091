//! The agent registry: who may act, with which keys, for whom, for what.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tether_token::{Algorithm, JwkSet, JwksCache, KeySource, StaticKeys, TokenError};

use crate::config::{AgentConfig, Config, parse_algorithms};

#[derive(Debug)]
pub enum AgentKeys {
    Static(StaticKeys),
    Remote(Box<JwksCache>),
    /// Proves itself with JWT-SVIDs only.
    None,
}

impl KeySource for AgentKeys {
    async fn key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<tether_token::DecodingKey, TokenError> {
        match self {
            Self::Static(keys) => keys.key(kid, alg).await,
            Self::Remote(keys) => keys.key(kid, alg).await,
            Self::None => Err(TokenError::UnknownKey(
                "(agent has no registered keys)".into(),
            )),
        }
    }
}

#[derive(Debug)]
pub struct Agent {
    pub id: String,
    pub spiffe_id: Option<String>,
    pub keys: AgentKeys,
    pub algorithms: Vec<Algorithm>,
    pub audiences: Vec<String>,
    pub scopes: Vec<String>,
    issuer: Option<String>,
    subjects: Vec<String>,
    groups: Vec<String>,
    may_delegate_to: Vec<String>,
}

impl Agent {
    fn new(
        config: &AgentConfig,
        http: &reqwest::Client,
        min_refresh: Duration,
    ) -> Result<Self, String> {
        let keys = match (&config.jwks, &config.jwks_uri) {
            (Some(jwks), _) => {
                let set: JwkSet =
                    serde_json::from_value(jwks.clone()).map_err(|e| e.to_string())?;
                AgentKeys::Static(StaticKeys::new(&set))
            }
            (None, Some(uri)) => AgentKeys::Remote(Box::new(
                JwksCache::new(uri.clone(), http.clone()).with_min_refresh_interval(min_refresh),
            )),
            (None, None) => AgentKeys::None,
        };
        Ok(Self {
            id: config.id.clone(),
            spiffe_id: config.spiffe_id.clone(),
            keys,
            algorithms: parse_algorithms(&config.algorithms)?,
            audiences: config.audiences.clone(),
            scopes: config.scopes.clone(),
            issuer: config.may_act_for.issuer.clone(),
            subjects: config.may_act_for.subjects.clone(),
            groups: config.may_act_for.groups.clone(),
            may_delegate_to: config.may_delegate_to.clone(),
        })
    }

    /// Whether this agent may act for the user `sub` of IdP `idp` with
    /// `groups`.
    pub fn may_act_for(&self, idp: &str, sub: &str, groups: &[String]) -> bool {
        if self.issuer.as_deref().is_some_and(|iss| iss != idp) {
            return false;
        }
        self.subjects.iter().any(|s| s == "*" || s == sub)
            || self.groups.iter().any(|g| groups.contains(g))
    }

    /// Whether a token this agent acts in may be re-exchanged by `agent`.
    pub fn may_delegate_to(&self, agent: &str) -> bool {
        self.may_delegate_to.iter().any(|a| a == agent)
    }
}

#[derive(Debug, Default)]
pub struct AgentRegistry {
    by_id: HashMap<String, Arc<Agent>>,
    by_spiffe: HashMap<String, Arc<Agent>>,
}

impl AgentRegistry {
    pub fn new(config: &Config, http: &reqwest::Client) -> Result<Self, String> {
        let min_refresh = Duration::from_secs(config.http.jwks_min_refresh_secs);
        let mut registry = Self::default();
        for agent in &config.agents {
            let agent = Arc::new(
                Agent::new(agent, http, min_refresh)
                    .map_err(|e| format!("agent `{}`: {e}", agent.id))?,
            );
            if let Some(spiffe) = &agent.spiffe_id {
                registry
                    .by_spiffe
                    .insert(spiffe.clone(), Arc::clone(&agent));
            }
            registry.by_id.insert(agent.id.clone(), agent);
        }
        Ok(registry)
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Agent>> {
        self.by_id.get(id)
    }

    pub fn by_spiffe_id(&self, id: &str) -> Option<&Arc<Agent>> {
        self.by_spiffe.get(id)
    }

    /// Every audience any agent may get (delegated tokens for these may be
    /// re-exchanged).
    pub fn all_audiences(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .by_id
            .values()
            .flat_map(|a| a.audiences.iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(issuer: Option<&str>) -> Agent {
        Agent {
            id: "a".into(),
            spiffe_id: None,
            keys: AgentKeys::None,
            algorithms: Vec::new(),
            audiences: Vec::new(),
            scopes: Vec::new(),
            issuer: issuer.map(str::to_owned),
            subjects: vec!["alice".into()],
            groups: vec!["hr".into()],
            may_delegate_to: Vec::new(),
        }
    }

    #[test]
    fn users_are_matched_with_their_idp() {
        let a = agent(Some("https://idp-a"));
        assert!(a.may_act_for("https://idp-a", "alice", &[]));
        assert!(
            !a.may_act_for("https://idp-b", "alice", &[]),
            "alice at B is not alice at A"
        );
        assert!(!a.may_act_for("https://idp-b", "bob", &["hr".into()]));
        assert!(a.may_act_for("https://idp-a", "bob", &["hr".into()]));
        assert!(!a.may_act_for("https://idp-a", "bob", &["eng".into()]));
        assert!(agent(None).may_act_for("https://any", "alice", &[]));
    }
}
