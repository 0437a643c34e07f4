"""The console's screens: launch, dashboard, carry inspector, runs browser, compare, help."""
