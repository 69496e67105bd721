"""Reports: pictures and plots a person can look at."""
