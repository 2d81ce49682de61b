//! Tasks and evaluator.
