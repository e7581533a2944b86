"""Training check and watchdog: read a run's metrics, detect anomalies, decide CONTINUE / WAIT / STOP."""
