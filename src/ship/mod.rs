//! Shipping: the batch envelope, and (issue 5) the durable outbox, circuit breaker and HTTP delivery.

pub mod batch;
