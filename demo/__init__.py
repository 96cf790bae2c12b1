"""The example app: projects, versioned categories and products, a cache plugin, a seeder."""
