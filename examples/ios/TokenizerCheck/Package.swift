// swift-tools-version:5.9
// The app's tokenizer (swift-transformers) against an export's tokenizer_vectors.json, on a Mac:
//   cd examples/ios/TokenizerCheck && BUNDLE_FOLDER=/path/to/export/coreml swift test
import PackageDescription

let package = Package(
    name: "TokenizerCheck",
    platforms: [.macOS(.v13), .iOS(.v16)],
    dependencies: [
        // the version whose sources alambic's check of tokenizer files was read from (core/ship/app_tokenizer.py)
        .package(url: "https://github.com/huggingface/swift-transformers", revision: "eec09bdffb04a6f13eaed57c7b4acca3f6729a6c"),
    ],
    targets: [
        .testTarget(
            name: "TokenizerCheckTests",
            dependencies: [.product(name: "Tokenizers", package: "swift-transformers")]
        ),
    ]
)
