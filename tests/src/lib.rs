//! End-to-end tests across crates: real HTTP server on loopback, real signed repositories, real GPT disk images, and loop devices when root.
