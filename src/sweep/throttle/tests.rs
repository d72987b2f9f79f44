//! The throttle's pace, floor and "behind", on tokio's paused clock.
