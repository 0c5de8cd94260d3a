"""What a block does: ``linear`` (softmax-regression probes on every tapped layer), ``features`` (how the
probes' features are tapped, pooled and held), ``deletion`` (residual blocks deleted, keeping the identity
path, test accuracy after each) and ``plots`` (their figures, the detected blocks shaded)."""
