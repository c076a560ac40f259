// The playground's page behaviour (filled in below).
