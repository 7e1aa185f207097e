//! The TUF client: the specification's detailed client workflow, step by step.
