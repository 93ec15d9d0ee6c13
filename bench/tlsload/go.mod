module libprefork.bench/tlsload

go 1.26.8
