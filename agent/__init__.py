"""RT-DRA agent."""
