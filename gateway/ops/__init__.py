"""Operations: metrics (declared in one module), logs, the stall rule, CPU counting. Below every other
layer but errors."""
