module libprefork.dev/prefork

go 1.22
