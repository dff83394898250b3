//! The app's acceptance tests: real apps on port 0 (in-process, or as child
//! processes when a signal is needed) against a real discovery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "acceptance/chaos.rs"]
mod chaos;
#[path = "acceptance/discovery_urls.rs"]
mod discovery_urls;
#[path = "acceptance/echo.rs"]
mod echo;
#[path = "acceptance/lifecycle.rs"]
mod lifecycle;
#[path = "acceptance/registration.rs"]
mod registration;
#[path = "acceptance/request_id.rs"]
mod request_id;
#[path = "acceptance/security.rs"]
mod security;
#[path = "acceptance/support.rs"]
mod support;
