"""RT-DRA extender."""
