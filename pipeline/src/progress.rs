//! Progress bars on stderr (indicatif hides them when stderr is not a terminal, where logs say the
//! same).
use indicatif::{ProgressBar, ProgressStyle};

/// A bar for `total` units of `unit`.
pub fn bar(total: u64, message: &str, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let template =
        format!("{{msg:>10}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}}");
    bar.set_style(
        ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

#[cfg(feature = "torch")]
/// Advances a training bar by one step and logs every tenth step (and the last).
pub fn train_step(bar: &ProgressBar, stage: &str, m: &dapt_trainer::StepMetrics, steps: usize) {
    bar.inc(1);
    bar.set_message(format!("{stage} {:.3}", m.loss));
    if m.step.is_multiple_of(10) || m.step + 1 == steps {
        tracing::info!(
            stage,
            step = m.step,
            loss = m.loss,
            lr = m.learning_rate,
            grad_norm = m.grad_norm,
            tokens_per_second = m.tokens_per_second as u64,
            heldout_loss = m.heldout_loss,
            "train"
        );
    }
}

/// A spinner with a message, for work of unknown length.
pub fn spinner(template: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar
}
