//! The integration test binary (one binary, ripgrep-style): boots the whole daemon
//! in-process with sim backends on 127.0.0.1:0 and talks to it over real sockets.

mod alerts;
mod anomaly;
mod api;
mod auth;
mod cameras;
mod cli;
mod coaching;
mod config_api;
mod drift;
mod expected;
mod gpio;
mod jobs;
mod learning;
mod modbus;
mod model;
mod models;
mod mqtt;
mod opcua;
mod openapi;
mod packaging;
mod pipelines;
mod shutdown;
mod support;
mod tidy;
mod wrench;
mod ws;
