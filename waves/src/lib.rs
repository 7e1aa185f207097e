//! Rollout gating: host seeds, wave schedules, readiness and eligibility times, wave policy files, fleet simulation. Pure logic, no I/O.
