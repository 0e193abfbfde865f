"""Data preparation: fetching data sets from registries and packages into data/ (`make data-*`)."""
